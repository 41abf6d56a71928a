"""The memory budget, the default budget and the ONNX size estimate (checked against ORT)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.errors import EdgeInferError, Unavailable
from edgeinfer.hardware import (
    BudgetExceeded,
    MemoryBudget,
    Readings,
    Reservation,
    default_budget_bytes,
    estimate_onnx_bytes,
)
from edgeinfer.hardware.budget import (
    CONV_RUNTIME_FACTOR,
    RESIDENT_FACTOR,
    RUNTIME_FACTOR,
    SESSION_OVERHEAD_BYTES,
    onnx_file_bytes,
)
from edgeinfer.testing import models

MB = 1 << 20
GiB = 1 << 30


def test_reserve_release_and_free_bytes() -> None:
    b = MemoryBudget(1000 * MB)
    assert b.reserve("a", 300 * MB) == Reservation("a", 300 * MB)
    b.reserve("b", 200 * MB)
    assert (b.used_bytes, b.free_bytes) == (500 * MB, 500 * MB)
    assert b.would_fit(500 * MB) and not b.would_fit(500 * MB + 1)
    assert b.release("a") == 300 * MB
    assert b.release("a") == 0  # releasing twice is harmless
    assert b.free_bytes == 800 * MB


def test_reserving_a_name_again_replaces_its_size() -> None:
    b = MemoryBudget(1000 * MB)
    b.reserve("a", 600 * MB)
    b.reserve("a", 900 * MB)  # fits: the old 600 MB are given back first
    assert b.used_bytes == 900 * MB
    assert b.reservations() == [Reservation("a", 900 * MB)]


def test_what_does_not_fit_is_named_with_the_shortfall_in_mb() -> None:
    b = MemoryBudget(1024 * MB)
    b.reserve("resnet", 700 * MB)
    b.reserve("minilm", 200 * MB)
    with pytest.raises(BudgetExceeded) as info:
        b.reserve("llama", 300 * MB)
    err = info.value
    assert isinstance(err, Unavailable) and isinstance(err, EdgeInferError)
    assert "'llama' needs 300.0 MB" in str(err)
    assert "124.0 MB free of 1024.0 MB" in str(err)
    assert "short by 176.0 MB" in str(err)
    assert "resnet, minilm" in str(err)  # idle models, least recently used first
    assert (err.needed, err.short) == (300 * MB, 176 * MB)
    assert b.used_bytes == 900 * MB  # nothing changed
    with pytest.raises(ValueError):
        b.reserve("x", -1)


def test_lru_of_idle_items_proposes_evictions() -> None:
    b = MemoryBudget(1000 * MB)
    for name in ("a", "b", "c"):
        b.reserve(name, 300 * MB)
    b.touch("a")  # order now b, c, a
    assert b.evict_candidates(50 * MB) == []  # already fits
    assert b.evict_candidates(200 * MB) == ["b"]
    assert b.evict_candidates(500 * MB) == ["b", "c"]
    b.pin("c")  # in use: never proposed
    assert b.evict_candidates(500 * MB) == ["b", "a"]
    assert b.evict_candidates(800 * MB) == []  # even all idle items would not make room
    b.unpin("c")
    assert b.evict_candidates(800 * MB) == ["b", "a", "c"]
    for name in b.evict_candidates(500 * MB):
        b.release(name)
    b.reserve("d", 500 * MB)
    assert [r.name for r in b.reservations()] == ["c", "d"]


def test_default_budget() -> None:
    assert default_budget_bytes(Readings()) is None
    # A 2 GiB container: 10 % is 205 MB, below the 256 MB minimum.
    two_gib = Readings(cgroup_memory_limit_bytes=2 * GiB, memory_available_bytes=200 * GiB)
    assert default_budget_bytes(two_gib) == 2 * GiB - 256 * MB
    # An 8 GB Pi without a cgroup limit: MemAvailable minus 10 %.
    pi = Readings(memory_available_bytes=8 * GiB)
    assert default_budget_bytes(pi) == 8 * GiB - int(8 * GiB * 0.1)
    # A limit above what is actually available: the available memory binds.
    loose = Readings(cgroup_memory_limit_bytes=16 * GiB, memory_available_bytes=4 * GiB)
    assert default_budget_bytes(loose) == 4 * GiB - int(4 * GiB * 0.1)
    assert default_budget_bytes(Readings(memory_available_bytes=100 * MB)) == 0


def test_estimate_counts_external_data(tmp_path: Path) -> None:
    import onnx

    path = models.mlp(tmp_path / "inline.onnx", n_in=256, hidden=512, n_out=64)
    inline_size, has_conv = onnx_file_bytes(path)
    assert inline_size == path.stat().st_size and not has_conv
    expected = int(inline_size * RUNTIME_FACTOR) + SESSION_OVERHEAD_BYTES
    assert estimate_onnx_bytes(path) == expected
    assert estimate_onnx_bytes(path, factor=1.0) == inline_size + SESSION_OVERHEAD_BYTES

    ext = tmp_path / "ext" / "model.onnx"
    ext.parent.mkdir()
    onnx.save_model(onnx.load(str(path)), str(ext), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data",
                    size_threshold=0)  # fmt: skip
    data = ext.parent / "model.onnx.data"
    assert ext.stat().st_size < 10_000 < data.stat().st_size
    assert onnx_file_bytes(ext)[0] == ext.stat().st_size + data.stat().st_size


def test_convolutions_use_the_larger_factor(tmp_path: Path) -> None:
    path = models.resnet18_like(tmp_path / "cnn.onnx", image=32)
    size, has_conv = onnx_file_bytes(path)
    assert has_conv
    assert estimate_onnx_bytes(path) == int(size * CONV_RUNTIME_FACTOR) + SESSION_OVERHEAD_BYTES


# Loads a model the way the server does (edgeinfer's ORT session options: arena off, level
# "all"), runs it once, and reports the RSS it added, the peak (VmHWM) above the start, and the
# RSS once glibc has returned freed blocks (malloc_trim).
_MEASURE = r"""
import ctypes, json, sys
import numpy as np
import onnxruntime as ort
from edgeinfer.config import OrtOptions
from edgeinfer.runtime.onnx import session_options

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

so = session_options(OrtOptions())
base = status("VmRSS")
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
s.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)})
resident, peak = status("VmRSS") - base, status("VmHWM") - base
try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except (OSError, AttributeError):  # not glibc
    pass
print(json.dumps({"resident": resident, "peak": peak, "trimmed": status("VmRSS") - base}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["matmul", "cnn"])
def test_estimate_against_a_real_onnxruntime_session(kind: str, tmp_path: Path) -> None:
    if kind == "cnn":  # 45 MB of Conv weights (ResNet-18 shape); small image: cheap to run
        path = models.resnet18_like(tmp_path / "m.onnx", image=32)
    else:  # 32 MB of MatMul weights, like a transformer's FFN
        path = models.mlp(tmp_path / "m.onnx", n_in=1024, hidden=4096, n_out=1024)
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    measured = json.loads(proc.stdout)
    size = path.stat().st_size
    estimate = estimate_onnx_bytes(path)
    found = (f"{kind}: file {size / MB:.1f} MB, peak {measured['peak'] / size:.2f}x, resident "
             f"{measured['resident'] / size:.2f}x, trimmed {measured['trimmed'] / size:.2f}x; "
             f"estimate {estimate / size:.2f}x")  # fmt: skip
    print(found)  # pytest -rP shows it
    # Found (onnxruntime 1.32, x86-64 AVX-512): see the table in hardware/budget.py.
    assert measured["resident"] <= estimate, found
    assert measured["peak"] <= estimate * 1.1, found
    assert estimate <= 2 * measured["peak"] + SESSION_OVERHEAD_BYTES, found  # not wildly over
    steady = estimate_onnx_bytes(path, factor=RESIDENT_FACTOR)
    assert measured["trimmed"] <= steady, found
