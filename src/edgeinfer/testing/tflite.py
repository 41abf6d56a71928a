"""Small .tflite models written by hand with the TFLite flatbuffer schema that the LiteRT wheel
ships (no TensorFlow, no converter): for tests and benchmarks.

`mlp` matches `testing.models.mlp` weight for weight, so every backend can be compared on the
same numbers; `mlp_int8` is its int8 twin (int8 input and output with scale and zero point);
`cnn` has a resizable batch axis; `fixed_batch` has a Reshape that refuses a resize;
`two_signatures` has two named signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _fb() -> Any:
    from ai_edge_litert import schema_py_generated as fb

    return fb


@dataclass
class _Graph:
    """One subgraph under construction plus the model's shared buffers and operator codes."""

    buffers: list[Any]
    codes: list[int]
    tensors: list[Any] = field(default_factory=list)
    operators: list[Any] = field(default_factory=list)

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: int,
        data: np.ndarray | None = None,
        quant: tuple[float, int] | None = None,
        batch: bool = False,
    ) -> int:
        fb = _fb()
        t = fb.TensorT()
        t.name, t.type, t.shape = name, dtype, list(shape)
        if batch:  # -1: a batch axis LiteRT may resize
            t.shapeSignature = [-1, *shape[1:]]
        t.buffer = 0
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = fb.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(quant[0])], [int(quant[1])]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(
        self,
        code: int,
        inputs: list[int],
        outputs: list[int],
        options_type: int = 0,
        options: Any = None,
    ) -> None:
        fb = _fb()
        if code not in self.codes:
            self.codes.append(code)
        o = fb.OperatorT()
        o.opcodeIndex = self.codes.index(code)
        o.inputs, o.outputs = inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def fully_connected(self, x: int, w: int, b: int, y: int, relu: bool = False) -> None:
        fb = _fb()
        opts = fb.FullyConnectedOptionsT()
        opts.fusedActivationFunction = fb.ActivationFunctionType.RELU if relu else 0
        self.op(
            fb.BuiltinOperator.FULLY_CONNECTED,
            [x, w, b],
            [y],
            fb.BuiltinOptions.FullyConnectedOptions,
            opts,
        )

    def subgraph(self, name: str, inputs: list[int], outputs: list[int]) -> Any:
        sg = _fb().SubGraphT()
        sg.name, sg.tensors, sg.operators = name, self.tensors, self.operators
        sg.inputs, sg.outputs = inputs, outputs
        return sg


def _signature(key: str, index: int, inputs: dict[str, int], outputs: dict[str, int]) -> Any:
    fb = _fb()

    def maps(named: dict[str, int]) -> list[Any]:
        out = []
        for name, tensor in named.items():
            m = fb.TensorMapT()
            m.name, m.tensorIndex = name, tensor
            out.append(m)
        return out

    sig = fb.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = key, index
    sig.inputs, sig.outputs = maps(inputs), maps(outputs)
    return sig


def _write(
    path: Path,
    codes: list[int],
    buffers: list[Any],
    subgraphs: list[Any],
    signatures: list[Any] | None = None,
) -> Path:
    import flatbuffers

    fb = _fb()
    model = fb.ModelT()
    model.version, model.description = 3, "edgeinfer test model"
    model.buffers, model.subgraphs = buffers, subgraphs
    model.signatureDefs = signatures or []
    model.operatorCodes = []
    for code in codes:
        oc = fb.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        model.operatorCodes.append(oc)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(builder.Output()))
    return path


def _empty_buffers() -> list[Any]:
    return [_fb().BufferT()]  # buffer 0: the empty sentinel every tensor without data uses


def mlp_weights(
    n_in: int = 16, hidden: int = 32, n_out: int = 4, seed: int = 0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The weights `testing.models.mlp` draws with the same arguments."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n_in, hidden)).astype(np.float32) * scale
    w2 = rng.standard_normal((hidden, n_out)).astype(np.float32)
    return w1, w2


def mlp(
    path: Path,
    n_in: int = 16,
    hidden: int = 32,
    n_out: int = 4,
    seed: int = 0,
    signature: str = "serving_default",
    batch: bool = True,
) -> Path:
    """`x` FP32 [N, n_in] -> `y` FP32 [N, n_out]: relu(x @ w1) @ w2, as testing.models.mlp.
    With `signature` (not "") the model has one signature naming `x` and `y`; without `batch`
    the file declares a batch of 1 (as converters often write) though the graph could resize."""
    fb = _fb()
    w1, w2 = mlp_weights(n_in, hidden, n_out, seed)
    g = _Graph(_empty_buffers(), [])
    f32 = fb.TensorType.FLOAT32
    x = g.tensor("x", (1, n_in), f32, batch=batch)
    t_w1 = g.tensor("w1", (hidden, n_in), f32, np.ascontiguousarray(w1.T))
    t_b1 = g.tensor("b1", (hidden,), f32, np.zeros(hidden, np.float32))
    h = g.tensor("h", (1, hidden), f32, batch=batch)
    t_w2 = g.tensor("w2", (n_out, hidden), f32, np.ascontiguousarray(w2.T))
    t_b2 = g.tensor("b2", (n_out,), f32, np.zeros(n_out, np.float32))
    y = g.tensor("y", (1, n_out), f32, batch=batch)
    g.fully_connected(x, t_w1, t_b1, h, relu=True)
    g.fully_connected(h, t_w2, t_b2, y)
    sigs = [_signature(signature, 0, {"x": x}, {"y": y})] if signature else None
    return _write(path, g.codes, g.buffers, [g.subgraph("main", [x], [y])], sigs)


def _symmetric(w: np.ndarray) -> tuple[np.ndarray, float]:
    scale = float(np.abs(w).max()) / 127.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def _range_quant(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) covering [lo, hi] (and 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def mlp_int8(path: Path, n_in: int = 16, hidden: int = 32, n_out: int = 4, seed: int = 0) -> Path:
    """The int8 twin of `mlp`: `x` INT8 [N, n_in] -> `y` INT8 [N, n_out], per-tensor scale and
    zero point on both (calibrated on inputs uniform in [-1, 1])."""
    fb = _fb()
    w1, w2 = mlp_weights(n_in, hidden, n_out, seed)
    calib = np.random.default_rng(1).uniform(-1, 1, (256, n_in)).astype(np.float32)
    hid = np.maximum(calib @ w1, 0)
    qx, qh, qy = (
        _range_quant(-1, 1),
        _range_quant(0, float(hid.max())),
        _range_quant(float((hid @ w2).min()), float((hid @ w2).max())),
    )
    (q1, s1), (q2, s2) = _symmetric(w1.T), _symmetric(w2.T)
    g = _Graph(_empty_buffers(), [])
    i8, i32 = fb.TensorType.INT8, fb.TensorType.INT32
    x = g.tensor("x", (1, n_in), i8, quant=qx, batch=True)
    t_w1 = g.tensor("w1", (hidden, n_in), i8, q1, quant=(s1, 0))
    t_b1 = g.tensor("b1", (hidden,), i32, np.zeros(hidden, np.int32), quant=(qx[0] * s1, 0))
    h = g.tensor("h", (1, hidden), i8, quant=qh, batch=True)
    t_w2 = g.tensor("w2", (n_out, hidden), i8, q2, quant=(s2, 0))
    t_b2 = g.tensor("b2", (n_out,), i32, np.zeros(n_out, np.int32), quant=(qh[0] * s2, 0))
    y = g.tensor("y", (1, n_out), i8, quant=qy, batch=True)
    g.fully_connected(x, t_w1, t_b1, h, relu=True)
    g.fully_connected(h, t_w2, t_b2, y)
    sigs = [_signature("serving_default", 0, {"x": x}, {"y": y})]
    return _write(path, g.codes, g.buffers, [g.subgraph("main", [x], [y])], sigs)


def cnn(path: Path, image: int = 8, channels: int = 8, classes: int = 10, seed: int = 0) -> Path:
    """`image` FP32 [N, image, image, 3] (NHWC) -> `logits` FP32 [N, classes]: conv 3x3 + relu,
    global average pool, fully connected. The batch axis resizes."""
    fb = _fb()
    rng = np.random.default_rng(seed)
    f32 = fb.TensorType.FLOAT32
    g = _Graph(_empty_buffers(), [])
    x = g.tensor("image", (1, image, image, 3), f32, batch=True)
    w = g.tensor(
        "conv_w",
        (channels, 3, 3, 3),
        f32,
        (rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32),
    )
    b = g.tensor("conv_b", (channels,), f32, np.zeros(channels, np.float32))
    c = g.tensor("conv", (1, image, image, channels), f32, batch=True)
    conv = fb.Conv2DOptionsT()
    conv.padding, conv.strideW, conv.strideH = fb.Padding.SAME, 1, 1
    conv.dilationWFactor = conv.dilationHFactor = 1
    conv.fusedActivationFunction = fb.ActivationFunctionType.RELU
    g.op(fb.BuiltinOperator.CONV_2D, [x, w, b], [c], fb.BuiltinOptions.Conv2DOptions, conv)
    p = g.tensor("pool", (1, 1, 1, channels), f32, batch=True)
    pool = fb.Pool2DOptionsT()
    pool.padding, pool.strideW, pool.strideH = fb.Padding.VALID, 1, 1
    pool.filterWidth = pool.filterHeight = image
    g.op(fb.BuiltinOperator.AVERAGE_POOL_2D, [c], [p], fb.BuiltinOptions.Pool2DOptions, pool)
    fw = g.tensor(
        "fc_w",
        (classes, channels),
        f32,
        rng.standard_normal((classes, channels)).astype(np.float32),
    )
    fbias = g.tensor("fc_b", (classes,), f32, np.zeros(classes, np.float32))
    y = g.tensor("logits", (1, classes), f32, batch=True)
    g.fully_connected(p, fw, fbias, y)  # flattens [N,1,1,C] to [N,C]
    return _write(path, g.codes, g.buffers, [g.subgraph("main", [x], [y])])


def fixed_batch(path: Path, n_in: int = 4) -> Path:
    """`x` FP32 [1, n_in] -> `y` FP32 [1, n_in] (the same values): a Reshape with a hard-coded
    shape, so the batch axis cannot be resized."""
    fb = _fb()
    f32 = fb.TensorType.FLOAT32
    g = _Graph(_empty_buffers(), [])
    x = g.tensor("x", (1, n_in), f32)
    shape = g.tensor("shape", (2,), fb.TensorType.INT32, np.array([1, n_in], np.int32))
    y = g.tensor("y", (1, n_in), f32)
    g.op(fb.BuiltinOperator.RESHAPE, [x, shape], [y])
    return _write(path, g.codes, g.buffers, [g.subgraph("main", [x], [y])])


def two_signatures(path: Path, n: int = 4) -> Path:
    """Signatures `add_one` (`x` -> `y` = x + 1) and `double` (`x` -> `y` = 2x), FP32 [N, n]."""
    fb = _fb()
    f32 = fb.TensorType.FLOAT32
    buffers, subgraphs, sigs = _empty_buffers(), [], []
    codes: list[int] = []
    for index, (key, op, const) in enumerate(
        (("add_one", fb.BuiltinOperator.ADD, 1.0), ("double", fb.BuiltinOperator.MUL, 2.0))
    ):
        g = _Graph(buffers, codes)
        x = g.tensor(f"{key}_x", (1, n), f32, batch=True)
        k = g.tensor(f"{key}_k", (1,), f32, np.array([const], np.float32))
        y = g.tensor(f"{key}_y", (1, n), f32, batch=True)
        g.op(op, [x, k], [y])
        subgraphs.append(g.subgraph(key, [x], [y]))
        sigs.append(_signature(key, index, {"x": x}, {"y": y}))
    return _write(path, codes, buffers, subgraphs, sigs)


def _conv(
    g: _Graph,
    rng: np.random.Generator,
    x: int,
    name: str,
    shape: tuple[int, ...],
    cout: int,
    k: int,
    stride: int,
    relu: bool,
) -> tuple[int, tuple[int, ...]]:
    fb = _fb()
    f32 = fb.TensorType.FLOAT32
    n, h, w, cin = shape
    fan_in = cin * k * k
    weights = (rng.standard_normal((cout, k, k, cin)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    tw = g.tensor(f"{name}_w", (cout, k, k, cin), f32, weights)
    tb = g.tensor(f"{name}_b", (cout,), f32, np.zeros(cout, np.float32))
    out_shape = (n, -(-h // stride), -(-w // stride), cout)
    y = g.tensor(name, out_shape, f32, batch=True)
    opts = fb.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = fb.Padding.SAME, stride, stride
    opts.dilationWFactor = opts.dilationHFactor = 1
    opts.fusedActivationFunction = fb.ActivationFunctionType.RELU if relu else 0
    g.op(fb.BuiltinOperator.CONV_2D, [x, tw, tb], [y], fb.BuiltinOptions.Conv2DOptions, opts)
    return y, out_shape


def resnet18_like(path: Path, image: int = 224, seed: int = 0) -> Path:
    """The ResNet-18-shaped CNN of `testing.models.resnet18_like` in TFLite's layout (NHWC,
    SAME padding; random weights): `input` FP32 [N, image, image, 3] -> `logits` FP32 [N, 1000]."""
    fb = _fb()
    f32 = fb.TensorType.FLOAT32
    rng = np.random.default_rng(seed)
    g = _Graph(_empty_buffers(), [])
    x = g.tensor("input", (1, image, image, 3), f32, batch=True)
    h, shape = _conv(g, rng, x, "stem", (1, image, image, 3), 64, 7, 2, relu=True)
    pooled = (1, -(-shape[1] // 2), -(-shape[2] // 2), 64)
    p = g.tensor("pool", pooled, f32, batch=True)
    pool = fb.Pool2DOptionsT()
    pool.padding, pool.strideW, pool.strideH = fb.Padding.SAME, 2, 2
    pool.filterWidth = pool.filterHeight = 3
    g.op(fb.BuiltinOperator.MAX_POOL_2D, [h], [p], fb.BuiltinOptions.Pool2DOptions, pool)
    x, shape, cin = p, pooled, 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage}b{block}"
            a, ashape = _conv(g, rng, x, name + "a", shape, cout, 3, stride, relu=True)
            b, bshape = _conv(g, rng, a, name + "b", ashape, cout, 3, 1, relu=False)
            short = x
            if stride != 1 or cin != cout:
                short, _ = _conv(g, rng, x, name + "d", shape, cout, 1, stride, relu=False)
            out = g.tensor(name + "_out", bshape, f32, batch=True)
            add = fb.AddOptionsT()
            add.fusedActivationFunction = fb.ActivationFunctionType.RELU
            g.op(fb.BuiltinOperator.ADD, [b, short], [out], fb.BuiltinOptions.AddOptions, add)
            x, shape, cin = out, bshape, cout
    gap = g.tensor("gap", (1, 1, 1, 512), f32, batch=True)
    avg = fb.Pool2DOptionsT()
    avg.padding, avg.strideW, avg.strideH = fb.Padding.VALID, 1, 1
    avg.filterHeight, avg.filterWidth = shape[1], shape[2]
    g.op(fb.BuiltinOperator.AVERAGE_POOL_2D, [x], [gap], fb.BuiltinOptions.Pool2DOptions, avg)
    fc = (rng.standard_normal((1000, 512)) * 0.05).astype(np.float32)
    fw = g.tensor("fc_w", (1000, 512), f32, fc)
    fbias = g.tensor("fc_b", (1000,), f32, np.zeros(1000, np.float32))
    y = g.tensor("logits", (1, 1000), f32, batch=True)
    g.fully_connected(gap, fw, fbias, y)
    return _write(path, g.codes, g.buffers, [g.subgraph("main", [0], [y])])
