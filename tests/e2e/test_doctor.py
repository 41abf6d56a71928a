"""`edgeinfer doctor` as a user runs it: on this machine and on a fake Raspberry Pi 5 tree."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from edgeinfer.cli.doctor import add_doctor, cmd_doctor
from edgeinfer.hardware import default_threads, usable_cpus
from tests.unit.hardware import trees

DOCTOR = [sys.executable, "-m", "edgeinfer.cli", "doctor"]


def doctor(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*DOCTOR, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    return proc


def test_this_machine_json() -> None:
    report = json.loads(doctor("--json").stdout)
    assert set(report) >= {"cpu", "frequency", "thermal", "memory", "runtimes", "recommendations"}
    cpu = report["cpu"]
    assert cpu["usable_cpus"] >= 1 and isinstance(cpu["simd"], list)
    assert report["memory"]["total_bytes"] > 0
    assert report["runtimes"]["onnxruntime"]["version"]
    assert "CPUExecutionProvider" in report["runtimes"]["onnxruntime"]["providers"]
    assert report["runtimes"]["numpy"]
    backends = {b["name"]: b for b in report["runtimes"]["backends"]}
    assert set(backends) == {"onnxruntime", "llama.cpp", "openvino", "litert"}
    assert all(b["installed"] and b["version"] for b in backends.values())  # the dev install
    assert backends["litert"]["files"] == ["model.tflite"]
    assert backends["openvino"]["install"] == "pip install 'edgeinfer[openvino]'"
    rec = report["recommendations"]
    # what a model with no config runs with on this machine
    assert rec["intra_op_threads"] == default_threads()
    assert cpu["usable_cpus"] == usable_cpus()
    assert rec["quantization"] and any("MatMulNBits" in q for q in rec["quantization"])


def test_this_machine_text() -> None:
    out = doctor().stdout
    for heading in ("CPU", "Clock and temperature", "Memory", "Runtimes", "Recommendations"):
        assert f"\n{heading}\n" in out
    for key in (
        "model",
        "usable CPUs",
        "SIMD",
        "temperature",
        "onnxruntime",
        "openvino",
        "litert",
        "threads",
    ):
        assert f"\n  {key} " in out


def test_fake_raspberry_pi(tmp_path: Path) -> None:
    root = trees.raspberry_pi(tmp_path)
    report = json.loads(doctor("--json", "--root", str(root)).stdout)
    assert report["thermal"]["cpu_temp_c"] == 61.2
    assert report["thermal"]["source"] == "cpu-thermal"
    cpu = report["cpu"]
    assert {"neon", "dotprod"} <= set(cpu["simd"]) and cpu["int8_dot"] == "dotprod"
    assert cpu["model"] == "Cortex-A76" and cpu["board"].startswith("Raspberry Pi 5")
    assert (cpu["online"], cpu["usable_cpus"], cpu["heterogeneous"]) == (4, 4, False)
    assert (report["frequency"]["cur_mhz_mean"], report["frequency"]["max_mhz"]) == (1500, 2400)
    assert report["memory"]["cgroup_version"] == 2
    assert report["memory"]["cgroup_limit_bytes"] is None
    assert report["recommendations"]["intra_op_threads"] == 4
    assert any("dotprod" in q for q in report["recommendations"]["quantization"])

    text = doctor("--root", str(root)).stdout
    assert "61.2 °C (cpu-thermal)" in text
    assert "neon" in text and "dotprod" in text
    assert "1500 MHz now (mean), max 2400 MHz" in text


def test_fake_container_reports_the_quota(tmp_path: Path) -> None:
    report = json.loads(doctor("--json", "--root", str(trees.container_v2(tmp_path))).stdout)
    assert (report["cpu"]["online"], report["cpu"]["usable_cpus"]) == (64, 2)
    assert report["memory"]["cgroup_limit_bytes"] == 2147483648
    assert report["memory"]["oom_kills"] == 3
    assert report["memory"]["model_budget_bytes"] == 2147483648 - 256 * (1 << 20)
    assert any("OOM kill" in n for n in report["recommendations"]["notes"])


def test_bad_root_is_a_one_line_error(tmp_path: Path) -> None:
    proc = doctor("--root", str(tmp_path / "missing"), code=2)
    assert "not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_import_is_cheap() -> None:
    code = (
        "import sys, edgeinfer.cli.doctor\n"
        "print(sorted({'onnxruntime', 'onnx', 'numpy', 'llama_cpp'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"  # none of the heavy runtimes imported


def test_add_doctor_registers_the_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="edgeinfer")
    add_doctor(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", "--json", "--root", "/tmp"])
    assert args.func is cmd_doctor and args.json and args.root == Path("/tmp")
