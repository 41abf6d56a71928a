"""Thread counts and CPU pinning chosen for a model from the device tree."""

from __future__ import annotations

from pathlib import Path

from edgeinfer.config import OrtOptions
from edgeinfer.runtime.onnx import placement
from tests.unit.hardware.trees import container_v2, raspberry_pi, rk3588


def test_threads_follow_the_cgroup_quota_not_the_host(tmp_path: Path) -> None:
    root = str(container_v2(tmp_path / "c", cores=64))
    assert placement(OrtOptions(intra_op_threads=0), root) == (2, ())


def test_big_cores_are_preferred_on_rk3588(tmp_path: Path) -> None:
    root = str(rk3588(tmp_path / "bl"))
    threads, cpus = placement(OrtOptions(intra_op_threads=0), root)
    assert cpus == (4, 5, 6, 7) and threads == 4


def test_explicit_settings_win(tmp_path: Path) -> None:
    root = str(raspberry_pi(tmp_path / "pi"))
    assert placement(OrtOptions(intra_op_threads=3, cpus=(1, 2)), root) == (3, (1, 2))
    assert placement(OrtOptions(intra_op_threads=1), root) == (1, ())
