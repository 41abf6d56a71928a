"""llama.cpp's CPU backend when it is built as run-time variants (`GGML_BACKEND_DL`).

A portable build (the container image: `GGML_NATIVE=OFF`) would otherwise run every CPU at the
architecture's baseline ISA. With `GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON` llama.cpp compiles
its CPU backend once per x86 micro-architecture (haswell, skylakex, zen4, ...) or Arm feature level
(armv8.2 dotprod, SVE, ...) as `libggml-cpu-<variant>.so`, and `ggml_backend_load_all_from_path`
opens each, asks it how well it fits this CPU and keeps the best. llama.cpp itself only looks
beside the Python executable and in the working directory, and llama-cpp-python never loads them:
ggml's install rule puts the variants in `site-packages/bin`, or in `llama_cpp/lib` when the build
says `-DCMAKE_INSTALL_BINDIR=llama_cpp/lib` (the image's does). So `load` does it, before
`llama_backend_init` (which would otherwise search the wrong places and give up). A build with a
built-in CPU backend (a source install: native) has a backend registered already; nothing to do.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

from edgeinfer.errors import LoadError

log = logging.getLogger("edgeinfer.llm")

# What ggml_backend_get_features names that is not an instruction set, and what every CPU of
# the architecture has (x86-64's SSE2 is not even listed; ARMv8.0 always has NEON and FMA).
_NOT_ISA = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE", "CPU_HBM"})
_BASELINE = frozenset({"NEON", "ARM_FMA"})

_lock = threading.Lock()
_done = False


def search_dirs(package_dir: Path) -> list[Path]:
    """Where a llama-cpp-python install may hold `libggml-cpu-*.so`, in the order tried."""
    return [package_dir / "lib", package_dir.parent / "bin"]


def load(llama_cpp: Any) -> str | None:
    """Load the best CPU variant this CPU runs, if the build has variants; its file name.

    Idempotent; call before `llama_backend_init`. Raises LoadError when the build has no
    built-in CPU backend and no variant that loads on this CPU."""
    global _done
    with _lock:
        g = libggml()
        if _done or g.ggml_backend_reg_count() > 0:
            _done = True
            return loaded_variant()
        package = Path(llama_cpp.__file__).parent
        tried = []
        for folder in search_dirs(package):
            if any(folder.glob("libggml-cpu-*.so")):
                tried.append(str(folder))
                g.ggml_backend_load_all_from_path(str(folder).encode())
                if g.ggml_backend_reg_by_name(b"CPU"):
                    break
        if not g.ggml_backend_reg_by_name(b"CPU"):
            where = ", ".join(tried) or " or ".join(str(d) for d in search_dirs(package))
            raise LoadError(
                "llama-cpp-python was built with GGML_BACKEND_DL but no CPU backend variant "
                f"loads on this CPU (looked in {where}); rebuild it with "
                "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON'"
            )
        _done = True
        variant = loaded_variant()
        log.info("llama.cpp CPU backend: %s", variant)
        return variant


def loaded_variant() -> str | None:
    """The file name of the CPU backend variant this process mapped (None: built in)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.startswith("libggml-cpu-") and ".so" in name:
            return name
    return None


def above_baseline(features: dict[str, str]) -> list[str]:
    """The instruction-set extensions in `ggml_backend_get_features` beyond the baseline."""
    return [k for k, v in features.items() if v == "1" and k not in _NOT_ISA | _BASELINE]


_libggml: Any = None


def libggml() -> Any:
    """ggml's functions as libllama sees them (its own registry of backends and devices).

    Not `llama_cpp._ggml.libggml`: that opens `lib/libggml.so` by path, and since the wheel holds
    copies, not symlinks, of `libggml.so` and the `libggml.so.0` libllama links, the process then
    has two libggml, each with its own registry; a backend loaded into that one stays invisible to
    libllama ("no backends are loaded"). Symbols looked up through libllama's handle resolve in
    its dependencies, so in the libggml it uses."""
    global _libggml
    if _libggml is None:
        import llama_cpp.llama_cpp as bindings

        g = ctypes.CDLL(bindings._lib._name)  # the same handle; our own signatures on it
        vp = ctypes.c_void_p
        for name, res, args in (
            ("ggml_backend_reg_count", ctypes.c_size_t, []),
            ("ggml_backend_reg_by_name", vp, [ctypes.c_char_p]),
            ("ggml_backend_load_all_from_path", None, [ctypes.c_char_p]),
        ):
            fn = getattr(g, name)
            fn.restype, fn.argtypes = res, args
        _libggml = g
    return _libggml
