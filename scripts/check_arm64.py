"""edgeinfer on arm64, checked from an x86 host under qemu user-mode emulation.

Run through `scripts/check-arm64 [--quick]` (as root). Phases, each timed into the results JSON:
  1. host tools (qemu-user-static, arch-test, mmdebstrap) and binfmt_misc;
  2. the arm64 Debian root (cached under .cache/arm64; cold: minutes);
  3. the project's wheel and its aarch64 dependencies installed in a venv inside it, from the
     package registries the host's pip configuration names (the venv is cached too and rebuilt
     when the dependencies change);
  4. the demo repository (built on the host: ONNX files do not depend on the architecture)
     served by `edgeinfer serve` in the root and, beside it, on the host;
  5. the same calls to both, compared: digits over KServe gRPC, MiniLM over KServe HTTP and the
     OpenAI embeddings route; in full mode also EfficientNet-Lite0 FP32 and INT8 on two JPEG
     photos over gRPC (logits and the classification extension's top 5) and the LLM demo's
     greedy completion; `edgeinfer doctor --json` inside.
Emulation says nothing about speed: only installability and answers are checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arm64_compare as compare
import arm64_llama as llama
import arm64_root as r

PROJECT = Path(__file__).resolve().parents[1]
CACHE = PROJECT / ".cache" / "arm64"
# Venvs in the root, one per mode so that switching between them reinstalls nothing.
VENVS = {"quick": "/opt/edgeinfer", "full": "/opt/edgeinfer-full"}
REPO = "/srv/models"  # in the root
# Extras worth installing on arm64 when the project defines them (aarch64 wheels exist).
ARM_EXTRAS = ("litert", "openvino")
READY_TIMEOUT_S = 900.0


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float | None] = {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        r.log(f"{name}: {self.seconds[name]:.0f} s")


# ---- install ----------------------------------------------------------------------------------
def _extras(with_llm: bool) -> list[str]:
    defined = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    extras = [e for e in ARM_EXTRAS if e in defined.get("optional-dependencies", {})]
    return [*extras, "llm"] if with_llm else extras


def _venv_key(root: Path, extras: list[str], local: list[Path]) -> str:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    deps = [project["dependencies"], {e: project["optional-dependencies"][e] for e in extras}]
    text = json.dumps([deps, [p.name for p in local]], sort_keys=True)
    text += (root / "etc/pip.conf").read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def in_root(root: Path, argv: list[str], binds: list[Path], env: dict[str, str] | None = None,
            **kwargs: Any) -> Any:  # fmt: skip
    return r.run(r.root_command(root, argv, {**r.base_env(), **(env or {})}, binds), **kwargs)


def install(root: Path, venv: str, extras: list[str], local: list[Path]) -> dict[str, Any]:
    """Install the project's wheel with `extras` into the root's venv, `local` wheels given to
    pip beside it (the cross-built llama-cpp-python); returns what the install weighs."""
    binds, env = r.mirror_pip_config(root), r.base_env()
    wheels = root / "tmp" / "check-arm64"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    for path in local:
        shutil.copy(path, wheels / path.name)
    given = [f"/tmp/check-arm64/{p.name}" for p in local]
    r.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
           str(wheels), str(PROJECT)], stdout=subprocess.DEVNULL)  # fmt: skip
    wheel = "/tmp/check-arm64/" + next(wheels.glob("edgeinfer-*.whl")).name
    key = _venv_key(root, extras, local)
    marker = root / venv.lstrip("/") / ".check-arm64-key"
    pip = [f"{venv}/bin/pip", "install", "--quiet", "--disable-pip-version-check"]
    fresh = not marker.exists() or marker.read_text() != key
    if fresh:
        r.log(f"installing edgeinfer{'[' + ','.join(extras) + ']' if extras else ''} and its "
              "aarch64 dependencies in the arm64 root (cold: minutes)")  # fmt: skip
        shutil.rmtree(root / venv.lstrip("/"), ignore_errors=True)
        in_root(root, ["python3", "-m", "venv", venv], binds)
        spec = f"{wheel}[{','.join(extras)}]" if extras else wheel
        in_root(root, [*pip, spec, *given], binds, env)
        marker.write_text(key)
    else:
        in_root(root, [*pip, "--no-deps", "--force-reinstall", wheel], binds, env)
    return {"fresh_venv": fresh, **site_packages(root, venv)}


def site_packages(root: Path, venv: str) -> dict[str, Any]:
    site = next((root / venv.lstrip("/") / "lib").glob("python3.*/site-packages"))
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())
    dirs = [d for d in site.iterdir() if d.is_dir() and not d.name.endswith(".dist-info")]
    sizes = sorted(((sum(f.stat().st_size for f in d.rglob("*") if f.is_file()), d.name)
                    for d in dirs), reverse=True)  # fmt: skip
    dists = sorted(d.name.split("-")[0].lower() for d in site.glob("*.dist-info"))
    return {
        "site_packages_mb": round(size / 2**20, 1),
        "distributions": len(dists),
        "biggest_mb": {name: round(n / 2**20, 1) for n, name in sizes[:6]},
    }


# ---- models and servers -----------------------------------------------------------------------
def publish_models(root: Path, with_llm: bool) -> Path:
    """Copy the host's demo repository (built on first use) into the root; returns it."""
    from edgeinfer.demo import ensure_demo_repository

    demo = ensure_demo_repository()
    repo = root / REPO.lstrip("/")
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    full = ["efficientnet-lite0", "llm-demo"] if with_llm else []
    for name in ("digits", "minilm", *full):
        shutil.copytree(demo / name, repo / name)
    return repo


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(argv: list[str], log_path: Path, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < READY_TIMEOUT_S:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-3000:]
    r.fail(f"the server ({log_path.name}) did not become ready; its log ends:\n{tail}")
    raise AssertionError  # unreachable


def serve_args(repo: str, http: int, grpc: int) -> list[str]:
    return ["serve", "--repository", repo, "--host", "127.0.0.1", "--http-port", str(http),
            "--grpc-port", str(grpc)]  # fmt: skip


# ---- main ---------------------------------------------------------------------------------------
def doctor_in_root(root: Path, venv: str) -> dict[str, Any]:
    out = in_root(root, [f"{venv}/bin/edgeinfer", "doctor", "--json"], [],
                  capture_output=True).stdout  # fmt: skip
    report = json.loads(out)
    cpu, rt = report["cpu"], report["runtimes"]
    return {
        "arch": cpu["arch"],
        "emulated": cpu.get("emulated"),
        "simd": cpu["simd"],
        "int8_dot": cpu["int8_dot"],
        "onnxruntime": (rt.get("onnxruntime") or {}).get("version"),
        "numpy": rt.get("numpy"),
        "python": rt.get("python"),
    }


def run_check(args: argparse.Namespace, phases: Phases) -> dict[str, Any]:
    with phases("host_tools"):
        bootstrap = r.ensure_host_tools()
        r.ensure_binfmt()
    with phases("rootfs"):
        root, built = r.rootfs(CACHE, bootstrap)
    with_llm = not args.quick
    venv = VENVS["full" if with_llm else "quick"]
    local = []
    if with_llm:
        with phases("llama_cpp_cross_build"):
            wheel, _ = llama.llama_wheel(CACHE, PROJECT)
            local.append(wheel)
    with phases("install"):
        weight = install(root, venv, _extras(with_llm), local)
    with phases("models"):
        repo = publish_models(root, with_llm)
    logs = Path(tempfile.mkdtemp(prefix="check-arm64-"))
    (arm_http, arm_grpc), (x86_http, x86_grpc) = (_port(), _port()), (_port(), _port())
    arm_argv = r.root_command(root, [f"{venv}/bin/edgeinfer", *serve_args(REPO, arm_http, arm_grpc)],
                              r.base_env())  # fmt: skip
    x86_argv = [sys.executable, "-m", "edgeinfer.cli", *serve_args(str(repo), x86_http, x86_grpc)]
    with server(arm_argv, logs / "arm64.log") as arm, server(x86_argv, logs / "x86.log") as x86:
        with phases("arm64_ready"):
            wait_ready(arm, arm_http, logs / "arm64.log")
        wait_ready(x86, x86_http, logs / "x86.log")
        with phases("checks"):
            checks = compare.all_checks(arm=(arm_http, arm_grpc), x86=(x86_http, x86_grpc),
                                        with_llm=with_llm)  # fmt: skip
    with phases("doctor"):
        doctor = doctor_in_root(root, venv)
    return {"rootfs_built_now": built is not None, "aarch64_install": weight,
            "checks": checks, "doctor": doctor}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/check-arm64", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="skip the LLM demo (no llama.cpp build in the root)")  # fmt: skip
    parser.add_argument("--results", type=Path, help="JSON output (default: bench/results/"
                        "arm64.json, arm64-quick.json with --quick)")  # fmt: skip
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        r.fail("run as root: it installs Debian packages, registers binfmt_misc and chroots")
    phases = Phases()
    try:
        result = run_check(args, phases)
    except subprocess.CalledProcessError as e:
        command = e.cmd[-1] if e.cmd[:1] == ["unshare"] else shlex.join(e.cmd)
        r.fail(f"exit code {e.returncode} from: {command[-400:]}")
    phases.seconds["total"] = round(time.perf_counter() - phases.started, 1)
    failed = [name for name, c in result["checks"].items() if not c.get("ok")]
    report = {
        "what": "edgeinfer installed, served and compared on arm64 (qemu user-mode emulation)",
        "mode": "quick" if args.quick else "full",
        "suite": r.SUITE,
        "qemu": r.qemu_version(),
        "qemu_cpu": r.base_env()["QEMU_CPU"],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "phases_s": phases.seconds,
        **result,
        "ok": not failed,
    }
    out = args.results or PROJECT / "bench" / "results" / (
        "arm64-quick.json" if args.quick else "arm64.json"
    )
    out.write_text(json.dumps(report, indent=2) + "\n")
    r.log(f"results in {out.relative_to(PROJECT) if out.is_relative_to(PROJECT) else out}")
    for name, c in result["checks"].items():
        r.log(f"{'ok  ' if c.get('ok') else 'FAIL'} {name}: {c.get('summary', '')}")
    if failed:
        r.log(f"FAILED: {', '.join(failed)}")
        return 1
    r.log(f"OK in {phases.seconds['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
