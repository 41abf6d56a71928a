"""Helpers for tests and benchmarks: tiny ONNX models built with onnx.helper, repositories."""
