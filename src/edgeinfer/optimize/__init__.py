"""Offline model optimization on top of ONNX Runtime's own tools: INT8 (dynamic and static,
calibrated) and INT4 weight-only quantization, offline graph optimization, an accuracy gate
against the FP32 model, automatic mixed precision, and a size/latency/accuracy report.

ONNX Runtime does the quantizing; this package chooses settings, streams data, checks the
result and publishes it (or not) as a new repository version. Entry points: `pipeline`
(`run_quantize`, `run_optimize`) and `cli` (`edgeinfer quantize | optimize`).
"""
