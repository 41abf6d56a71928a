"""llama-cpp-python for the arm64 root, cross-compiled on the host (scripts/check_arm64.py).

PyPI has no aarch64 wheel of llama-cpp-python: pip compiles llama.cpp at install, and compiling
it under qemu emulation takes far longer than natively. Its Python package reaches llama.cpp
through ctypes, so the wheel holds no CPython extension: the shared libraries are built on the
host with Debian's aarch64 cross compiler and the wheel is tagged linux_aarch64
(`_PYTHON_HOST_PLATFORM`, which sysconfig and packaging honour). The wheel is cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import arm64_root as r

CROSS = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}
_EM_AARCH64 = 0xB7
# The demo needs the CPU backend only: no multimodal library, ggml's own thread pool (no
# libgomp in the root), no host-specific instructions.
CMAKE_ARGS = (
    "-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 "
    "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ "
    "-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF"
)


def pinned_version(project: Path) -> str:
    """The llama-cpp-python version the project's `llm` extra pins."""
    extras = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    for req in extras["optional-dependencies"]["llm"]:
        name, sep, version = req.partition("==")
        if name.strip().lower() == "llama-cpp-python" and sep:
            return version.strip()
    r.fail("pyproject.toml's llm extra does not pin llama-cpp-python==X")
    raise AssertionError  # unreachable


def _is_aarch64_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == _EM_AARCH64


def check_wheel(wheel: Path) -> None:
    """Fail unless the wheel is tagged linux_aarch64 and its libraries are aarch64 code."""
    with zipfile.ZipFile(wheel) as z:
        libs = [n for n in z.namelist() if n.endswith(".so") or ".so." in n]
        if not wheel.name.endswith("linux_aarch64.whl") or not libs:
            r.fail(f"{wheel.name}: not an aarch64 wheel with libraries")
        wrong = [n for n in libs if not _is_aarch64_elf(z.read(n)[:20])]
    if wrong:
        r.fail(f"{wheel.name}: not aarch64 code: {', '.join(wrong)}")


def llama_wheel(cache: Path, project: Path) -> tuple[Path, float | None]:
    """The cached aarch64 wheel (cross-compiled now if missing) and the seconds a build took."""
    version = pinned_version(project)
    folder = cache / "wheels"
    found = sorted(folder.glob(f"llama_cpp_python-{version}-*linux_aarch64.whl"))
    if found:
        return found[-1], None
    r.apt_install([pkg for tool, pkg in CROSS.items() if not shutil.which(tool)])
    r.log(f"cross-compiling llama-cpp-python {version} for aarch64 (several minutes)")
    started = time.perf_counter()
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "_PYTHON_HOST_PLATFORM": "linux-aarch64",
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # --no-cache-dir: pip's wheel cache would hand back the host's x86 build of this sdist.
        r.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
               "--no-binary", "llama-cpp-python", "--wheel-dir", tmp,
               f"llama-cpp-python=={version}"], env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        built = next(Path(tmp).glob("llama_cpp_python-*.whl"))
        check_wheel(built)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(built, folder / built.name)
    return folder / built.name, time.perf_counter() - started
