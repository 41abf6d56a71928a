"""Small models and data for the optimizer's tests (built in-process, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeinfer.testing import models


def outlier_mlp(path: Path, n_in: int = 16, hidden: int = 64, n_out: int = 8,
                seed: int = 0) -> Path:  # fmt: skip
    """`x` FP32 [N, n_in] -> `y` FP32 [N, n_out] through two named MatMuls, `fc1` and `fc2`.

    One weight of fc1 is 1000x the others, in the row of an input that is masked to zero and
    the column of a hidden unit that does not reach the output: per-tensor INT8 then rounds
    every other fc1 weight to zero (a real, large accuracy drop), per-channel does not (on
    either axis), and fc2 quantizes fine. Keeping fc1 in FP32 is the repair `--auto` finds.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n_in, hidden)).astype(np.float32)
    w1[0, 0] = 1000.0
    w2 = rng.standard_normal((hidden, n_out)).astype(np.float32)
    w2[0, :] = 0.0  # the outlier's unit does not reach the output
    mask = np.ones(n_in, np.float32)
    mask[0] = 0.0
    nodes = [
        helper.make_node("Mul", ["x", "mask"], ["xm"], name="mask"),
        helper.make_node("MatMul", ["xm", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [models._init("mask", mask), models._init("w1", w1), models._init("w2", w2)],
    )  # fmt: skip
    return models._save(graph, path)


def identity(path: Path) -> Path:
    """`x` FP32 [N, 4] -> `y`: nothing a quantizer can work on."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )  # fmt: skip
    return models._save(graph, path)


def samples(path: Path, n: int = 200, n_in: int = 16, seed: int = 1, **extra: np.ndarray) -> Path:
    x = np.random.default_rng(seed).standard_normal((n, n_in)).astype(np.float32)
    np.savez(path, x=x, **extra)
    return path
