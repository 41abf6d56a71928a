import numpy as np
import pytest

from edgeinfer.errors import InvalidInput
from edgeinfer.serving.validation import validate_request
from edgeinfer.types import InferRequest, RequestedOutput, Tensor, TensorSpec

INPUTS = (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("m", "INT64", (-1, 4)))
OUTPUTS = (TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "FP32", (-1,)))


def req(*tensors: Tensor, outputs: list[str] | None = None) -> InferRequest:
    outs = [RequestedOutput(o) for o in outputs] if outputs else None
    return InferRequest("m", list(tensors), outputs=outs)


def x(n: int = 2, dtype: type = np.float32, cols: int = 4, name: str = "x") -> Tensor:
    return Tensor(name, np.zeros((n, cols), dtype))


def test_valid_request_gives_feeds_and_outputs() -> None:
    feeds, names = validate_request(
        req(x(), x(dtype=np.int64, name="m"), outputs=["z"]), INPUTS, OUTPUTS, 8
    )
    assert set(feeds) == {"x", "m"}
    assert names == ["z"]


@pytest.mark.parametrize(("tensors", "needle"), [
    ((x(), x(dtype=np.int64, name="m"), x(name="q")), "unexpected input 'q'"),
    ((x(dtype=np.float64), x(dtype=np.int64, name="m")), "datatype FP64"),
    ((x(cols=3), x(dtype=np.int64, name="m")), "shape \\[2, 3\\]"),
    ((x(n=9), x(n=9, dtype=np.int64, name="m")), "max_batch_size 8"),
    ((x(),), "missing inputs: \\['m'\\]"),
    ((x(), x(), x(dtype=np.int64, name="m")), "more than once"),
    ((x(n=2), x(n=3, dtype=np.int64, name="m")), "disagree on the batch size"),
])  # fmt: skip
def test_invalid_requests(tensors: tuple[Tensor, ...], needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        validate_request(req(*tensors), INPUTS, OUTPUTS, 8)


def test_unknown_output() -> None:
    with pytest.raises(InvalidInput, match="unknown output 'w'"):
        validate_request(req(x(), x(dtype=np.int64, name="m"), outputs=["w"]), INPUTS, OUTPUTS, 8)


TEXT = (TensorSpec("text", "BYTES", (-1,), max_count=3, max_bytes=8),)


def strings(*items: bytes | str) -> Tensor:
    data = np.empty(len(items), dtype=object)
    data[:] = list(items)
    return Tensor("text", data)


@pytest.mark.parametrize(("tensor", "needle"), [
    (strings(b"a", b"b", b"c", b"d"), "4 strings; the model takes at most 3"),
    (strings(b"short", b"123456789"), "a string of 9 bytes; the model takes at most 8"),
    (strings("ninechars"), "a string of 9 bytes"),
    (Tensor("text", np.array([b"123456789"])), "a string of 9 bytes"),
])  # fmt: skip
def test_text_inputs_are_bounded_before_the_model_sees_them(tensor: Tensor, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        validate_request(req(tensor), TEXT, OUTPUTS, 0)


def test_text_inputs_within_bounds_pass() -> None:
    feeds, _ = validate_request(req(strings(b"", b"12345678", b"x")), TEXT, OUTPUTS, 0)
    assert list(feeds["text"]) == [b"", b"12345678", b"x"]


@pytest.mark.parametrize("shape", [(0, 4), (2, 0), (0, 0)])
def test_a_dimension_of_size_zero_is_refused_with_the_shape_named(shape: tuple[int, int]) -> None:
    empty = Tensor("x", np.zeros(shape, np.float32))
    m = Tensor("m", np.zeros((shape[0], 4), np.int64))
    with pytest.raises(
        InvalidInput, match=rf"shape \[{shape[0]}, {shape[1]}\] has a dimension of size 0"
    ):
        validate_request(req(empty, m), INPUTS, OUTPUTS, 8)
