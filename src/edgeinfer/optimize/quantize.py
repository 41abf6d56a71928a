"""Thin, checked wrappers over `onnxruntime.quantization`: we choose settings and feed data;
ONNX Runtime does the quantization.

Defaults follow what was measured on x86 with AVX-512 VNNI (shared/FACTS.md):
- static: U8S8 (uint8 activations, int8 weights), QDQ, per-channel: fully fused INT8 kernels;
- dynamic: int8 weights per-channel (per-tensor loses MiniLM accuracy); meant for transformers,
  it is several times slower than FP32 on CNNs;
- int4: `MatMulNBitsQuantizer`, symmetric blocks, int8 compute (accuracy_level 4).
Calibration runs through `create_calibrator` in chunks (bounded memory, and a real entropy
search: `quantize_static(calibrate_method=Entropy)` with default bins equals MinMax) and is
cached, so `--auto` re-quantizes without calibrating again.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.source import OptimizeError, first_line

MODES = ("dynamic", "static", "int4")
METHODS = ("minmax", "entropy", "percentile")
FORMATS = ("qdq", "qoperator")
# Ops with constant weights that each mode turns into integer kernels.
WEIGHTED_OPS = {
    "dynamic": {"MatMul", "Conv", "Gather", "Attention", "LSTM"},
    "static": {"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention"},
    "int4": {"MatMul"},
}
CALIBRATION_CHUNK = 1  # batches per collect_data call: the calibrator holds every activation
ENTROPY_BINS = 1024  # the default 128 bins leave entropy no threshold to search


@dataclass(frozen=True)
class QuantSettings:
    mode: str
    method: str = "minmax"
    per_channel: bool = True
    format: str = "qdq"
    reduce_range: bool = False
    block_size: int = 32

    def __post_init__(self) -> None:
        for value, allowed, flag in (
            (self.mode, MODES, "--mode"),
            (self.method, METHODS, "--method"),
            (self.format, FORMATS, "--format"),
        ):
            if value not in allowed:
                raise OptimizeError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
        if self.mode == "int4" and (
            self.block_size < 16 or self.block_size & (self.block_size - 1)
        ):
            raise OptimizeError("--block-size must be a power of two >= 16")

    @property
    def tag(self) -> str:
        return "int4" if self.mode == "int4" else f"int8-{self.mode}"

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        if self.mode != "static":
            d.pop("method")
            d.pop("format")
        if self.mode != "int4":
            d.pop("block_size")
        else:
            d.pop("per_channel")
            d.pop("reduce_range")
            d.update(bits=4, symmetric=True, accuracy_level=4)
        if self.mode == "static":
            d.update(activation_type="QUInt8", weight_type="QInt8")
        elif self.mode == "dynamic":
            d.update(weight_type="QInt8")
        return d


@contextmanager
def quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools log advice to the root logger, warn and print; the
    CLI's promise is one line per error and clean --json, so all three are held back."""
    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        # The histogram calibrators print progress to stdout, which holds --json output.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", module=r"onnxruntime\.")
            warnings.filterwarnings("ignore", module=r"onnx_ir\.")
            warnings.filterwarnings("ignore", module=r"onnx\.")
            yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)


def weighted_nodes(model: Any, mode: str) -> list[str]:
    """Names of the nodes `mode` can quantize: the op types above with a constant weight."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in WEIGHTED_OPS[mode] and any(i in consts for i in n.input)
    ]


def reader(batches: Iterator[dict[str, Any]]) -> Any:
    """An ORT CalibrationDataReader over a stream of feeds."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, Any] | None:
            return next(batches, None)

    return _Reader()


def calibrate(model: Path, data: Dataset, method: str, batch_size: int, workdir: Path) -> Path:
    """Run the calibrator over `data` chunk by chunk; return the ORT calibration cache file."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    ort_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    options: dict[str, Any] = {"entropy": {"num_bins": ENTROPY_BINS}}.get(method, {})
    try:
        with quiet():
            calibrator = create_calibrator(
                model,
                None,
                augmented_model_path=str(workdir / "augmented.onnx"),
                calibrate_method=ort_method,
                extra_options=options,
            )
            batches = data.batches(batch_size)
            while chunk := list(itertools.islice(batches, CALIBRATION_CHUNK)):
                calibrator.collect_data(reader(iter(chunk)))
            ranges = calibrator.compute_data()
    except OptimizeError:
        raise
    except Exception as e:
        raise OptimizeError(f"{data.path}: calibration failed: {first_line(e)}") from e
    cache = workdir / f"calibration-{method}.json"
    save_tensors_data(ranges, cache)
    return cache


def quantize(
    src: Path,
    dst: Path,
    settings: QuantSettings,
    calibration: Path | None = None,
    exclude: list[str] | None = None,
) -> None:
    """Write the quantized model to `dst`; `exclude` names nodes to keep in FP32."""
    exclude = list(exclude or [])
    try:
        with quiet():
            if settings.mode == "dynamic":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(
                    src,
                    dst,
                    per_channel=settings.per_channel,
                    reduce_range=settings.reduce_range,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                )
            elif settings.mode == "static":
                _static(src, dst, settings, calibration, exclude)
            else:
                _int4(src, dst, settings, exclude)
    except OptimizeError:
        raise
    except Exception as e:  # ORT's quantizer raises many types; the user sees one line
        raise OptimizeError(f"{src}: ONNX Runtime could not quantize it: {first_line(e)}") from e


def _static(
    src: Path, dst: Path, settings: QuantSettings, calibration: Path | None, exclude: list[str]
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibration is None:
        raise OptimizeError("--mode static needs --calibration DATA")
    quantize_static(
        src,
        dst,
        None,
        quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[settings.method],
        calibration_cache_path=calibration,
    )


def _int4(src: Path, dst: Path, settings: QuantSettings, exclude: list[str]) -> None:
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:
        raise OptimizeError(
            f"--mode int4 needs ONNX Runtime's MatMulNBitsQuantizer, which cannot be imported "
            f"({e}); install onnx-ir (pip install onnx-ir)"
        ) from e
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=4,
        block_size=settings.block_size,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=exclude,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
