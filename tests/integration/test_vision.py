"""Photos in, labels out: encoded images and Triton's classification extension on a real server,
spoken to by tritonclient over HTTP and gRPC."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from PIL import Image
from tritonclient.utils import InferenceServerException

from edgeinfer.testing import models
from tests.helpers import ServerProcess, serve

COLOURS = ("red", "green", "blue")
SIDE = 16


def photo(rgb: tuple[int, int, int], fmt: str = "JPEG", size: tuple[int, int] = (64, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, fmt)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (150, 200, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def bomb() -> bytes:
    """A 60-byte PNG claiming 8000 x 8000 pixels."""
    ihdr = struct.pack(">IIBBBBB", 8_000, 8_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IDAT\x35\xaf\x06\x1e")  # fmt: skip


CONFIG = f"""\
max_batch_size = 8
[image]
max_pixels = 1_000_000
[preprocess]
resize = {SIDE}
[outputs.scores]
label_filename = "labels.txt"
[dynamic_batching]
max_queue_delay_us = 2000
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repo")
    build = tmp_path_factory.mktemp("build")
    labels = build / "labels.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    onnx_path = models.colours(build / "colours.onnx", side=SIDE)
    models.publish(root, "colours", onnx_path, CONFIG, extra={"labels.txt": labels})
    models.publish(root, "plain", onnx_path, "max_batch_size = 8\n")
    with serve(root, tmp_path_factory.mktemp("logs") / "server.log",
               "--max-string-bytes", "64") as s:  # fmt: skip
        yield s


def _images(module: Any, images: list[bytes]) -> Any:
    inp = module.InferInput("image", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=object))
    return inp


@pytest.mark.parametrize("module", [thttp, tgrpc], ids=["http", "grpc"])
def test_photos_come_back_as_labelled_classes(server: ServerProcess, module: Any) -> None:
    addr = server.http_addr if module is thttp else server.grpc_addr
    client = module.InferenceServerClient(addr)
    images = [photo((230, 20, 30)), photo((10, 200, 40), "PNG"), photo((5, 10, 250), "WEBP")]
    out = module.InferRequestedOutput("scores", class_count=2)
    result = client.infer("colours", [_images(module, images)], outputs=[out])
    top = result.as_numpy("scores")
    assert top.shape == (3, 2)
    assert [row[0].decode().split(":")[2] for row in top] == ["red", "green", "blue"]
    value, index, _ = top[0][0].decode().split(":")
    assert index == "0" and float(value) > 0.5 and len(value.split(".")[1]) == 6
    plain = client.infer("colours", [_images(module, images[:1])]).as_numpy("scores")
    assert plain.shape == (1, 3) and plain.dtype == np.float32


def test_json_classification_matches_tritons_shape_and_strings(server: ServerProcess) -> None:
    raw = np.zeros((1, 3, SIDE, SIDE), np.float32)
    raw[:, 1] = 0.8  # a raw FP32 tensor still works beside encoded images
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(raw.shape),
                        "data": raw.ravel().tolist()}],
            "outputs": [{"name": "scores", "parameters": {"classification": 5}}]}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/colours/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 3]
    assert out["data"] == ["0.800000:1:green", "-0.400000:0:red", "-0.400000:2:blue"]
    # A model without labels gives value:index; the classification extension is advertised.
    r = httpx.post(f"{server.url}/v2/models/plain/infer",
                   json={**body, "outputs": [{"name": "scores",
                                              "parameters": {"classification": 1}}]})  # fmt: skip
    assert r.json()["outputs"][0]["data"] == ["0.800000:1"]
    assert "classification" in httpx.get(f"{server.url}/v2").json()["extensions"]
    config = httpx.get(f"{server.url}/v2/models/colours/config").json()
    assert config["output"][0]["label_filename"] == "labels.txt"


def test_metadata_declares_the_image_input_as_bytes(server: ServerProcess) -> None:
    md = httpx.get(f"{server.url}/v2/models/colours").json()
    assert md["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not an image at all", "element 1: not an image in a supported format"),
        (truncated_jpeg(), "element 1: cannot decode the JPEG image (truncated"),
        (bomb(), "element 1: 8000x8000 is 64000000 pixels, above the limit of 1000000"),
        (photo((1, 2, 3), size=(1200, 1000)), "element 1: 1200x1000 is 1200000 pixels, above"),
    ],
)
@pytest.mark.parametrize("module", [thttp, tgrpc], ids=["http", "grpc"])
def test_bad_images_are_refused_naming_input_and_element(
    server: ServerProcess, module: Any, data: bytes, why: str
) -> None:
    addr = server.http_addr if module is thttp else server.grpc_addr
    client = module.InferenceServerClient(addr)
    with pytest.raises(InferenceServerException) as e:
        client.infer("colours", [_images(module, [photo((9, 9, 9)), data])])
    assert f"input 'image' {why}" in e.value.message()
    assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    ok = client.infer("colours", [_images(module, [photo((0, 250, 0))])]).as_numpy("scores")
    assert int(ok.argmax()) == 1  # the server goes on serving


def test_images_have_their_own_byte_limit_and_strings_keep_theirs(server: ServerProcess) -> None:
    # --max-string-bytes is 64 here; a photo is far longer and still accepted as an image.
    client = thttp.InferenceServerClient(server.http_addr)
    big = photo((200, 0, 0), "PNG", size=(300, 300))
    assert len(big) > 64
    assert int(client.infer("colours", [_images(thttp, [big])]).as_numpy("scores").argmax()) == 0
    too_many = [photo((1, 1, 1), "PNG")] * 9
    with pytest.raises(InferenceServerException, match="at most 8 elements"):
        client.infer("colours", [_images(thttp, too_many)])


def test_classification_of_a_bytes_output_or_a_bad_count_is_400(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
            "outputs": [{"name": "scores", "parameters": {"classification": -2}}]}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/colours/infer", json=body)
    assert r.status_code == 400 and "'classification' must be a non-negative" in r.text


def test_a_model_whose_label_file_is_missing_does_not_load(tmp_path: Path) -> None:
    onnx_path = models.colours(tmp_path / "c.onnx", side=SIDE)
    models.publish(tmp_path / "repo", "c", onnx_path, CONFIG)  # no labels.txt published
    with serve(tmp_path / "repo", tmp_path / "log", wait="live") as s:
        r = httpx.post(f"{s.url}/v2/repository/models/c/load", timeout=60)
        assert r.status_code >= 400 and "no labels.txt in" in r.json()["error"], r.text


# ---- the demo's EfficientNet-Lite0 on real photos -----------------------------------------------
TEMPLE = {"bell tower", "church", "stupa", "monastery", "palace", "mosque"}


def sample_photo(name: str) -> bytes:
    from sklearn.datasets import load_sample_image

    buf = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("version", ["", "1", "2"], ids=["default", "fp32", "int8"])
@pytest.mark.parametrize("module", [thttp, tgrpc], ids=["http", "grpc"])
def test_efficientnet_sees_a_daisy_and_a_temple(
    demo_server: ServerProcess, module: Any, version: str
) -> None:
    addr = demo_server.http_addr if module is thttp else demo_server.grpc_addr
    client = module.InferenceServerClient(addr)
    photos = [sample_photo("flower.jpg"), sample_photo("china.jpg")]
    out = module.InferRequestedOutput("logits", class_count=5)
    result = client.infer("efficientnet-lite0", [_images(module, photos)], model_version=version,
                          outputs=[out])  # fmt: skip
    top = [[s.decode().split(":", 2) for s in row] for row in result.as_numpy("logits")]
    assert top[0][0][1:] == ["985", "daisy"]
    assert TEMPLE & {label for _, _, label in top[1]}, top[1]


def test_efficientnet_takes_a_preprocessed_fp32_tensor(demo_server: ServerProcess) -> None:
    from edgeinfer.runtime.images import Preprocess, decode
    from edgeinfer.types import TensorSpec

    # The client preprocesses as the config says, then sends FP32 [1,3,224,224].
    table = {"size": [224, 224], "resize": 256, "interpolation": "bicubic", "scale": 1.0,
             "mean": [127.0] * 3, "std": [128.0] * 3}  # fmt: skip
    prep = Preprocess.from_table(table, TensorSpec("image", "FP32", (-1, 3, 224, 224)))
    x = decode(sample_photo("flower.jpg"), prep)[None]
    client = thttp.InferenceServerClient(demo_server.http_addr)
    inp = thttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    logits = client.infer("efficientnet-lite0", [inp], model_version="1").as_numpy("logits")
    assert logits.shape == (1, 1000) and int(logits.argmax()) == 985


def test_a_truncated_photo_is_a_400_and_the_model_keeps_serving(demo_server: ServerProcess) -> None:
    client = tgrpc.InferenceServerClient(demo_server.grpc_addr)
    flower = sample_photo("flower.jpg")
    with pytest.raises(InferenceServerException) as e:
        client.infer("efficientnet-lite0", [_images(tgrpc, [flower[: len(flower) // 3]])])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'image' element 0: cannot decode the JPEG image" in e.value.message()
    top = client.infer("efficientnet-lite0", [_images(tgrpc, [flower])],
                       outputs=[tgrpc.InferRequestedOutput("logits", class_count=1)])  # fmt: skip
    assert top.as_numpy("logits")[0][0].decode().endswith(":985:daisy")
