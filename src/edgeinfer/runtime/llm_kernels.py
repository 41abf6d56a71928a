"""Which of llama.cpp's CPU "extra buffer types" this process loads weights into.

llama.cpp's CPU backend offers a list of extra buffer types, in order of preference: `AMX`
(Intel AMX tiles, when built with AMX and the kernel grants the tile state), `KleidiAI` (Arm),
`CPU_REPACK` (weights repacked at load for AVX2/AVX-512/NEON GEMM/GEMV kernels: Q4_0, Q8_0,
IQ4_NL). `llama_model_params.use_extra_bufts` turns the whole list on or off; there is no switch
for one entry. So to keep the repacked kernels on a CPU whose AMX kernels fault, this module
removes entries from the list itself: the CPU device hands the model loader a pointer to a
NULL-terminated array (`ggml_backend_dev_get_extra_bufts`, a static array in libggml-cpu), and
dropping an entry shifts the rest left within that array. The compute side keeps its own list
and picks a kernel by the buffer a weight lives in, so weights never placed in an AMX buffer
never reach the AMX kernels. Call `drop` before the first model load; it lasts for the process.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any

from edgeinfer.runtime import llm_backends

_CPU = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
_ggml: Any = None


def _lib() -> Any:
    """libggml (llama-cpp-python's copy), with the signatures we call."""
    global _ggml
    if _ggml is None:
        import llama_cpp

        g = llm_backends.libggml()  # the libggml libllama uses (llama_cpp._ggml is a copy)
        llm_backends.load(llama_cpp)  # else a GGML_BACKEND_DL build has no CPU device yet
        llama_cpp.llama_backend_init()
        vp = ctypes.c_void_p
        for name, res, args in (
            ("ggml_backend_dev_by_type", vp, [ctypes.c_int]),
            ("ggml_backend_dev_backend_reg", vp, [vp]),
            ("ggml_backend_reg_get_proc_address", vp, [vp, ctypes.c_char_p]),
            ("ggml_backend_buft_name", ctypes.c_char_p, [vp]),
        ):
            fn = getattr(g, name)
            fn.restype, fn.argtypes = res, args
        _ggml = g
    return _ggml


def _extra_array() -> Any:
    """The CPU device's NULL-terminated array of extra buffer types (None if it has none)."""
    g = _lib()
    dev = g.ggml_backend_dev_by_type(_CPU)
    if not dev:
        return None
    reg = g.ggml_backend_dev_backend_reg(dev)
    addr = g.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not addr:
        return None
    get = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
    arr = get(dev)
    return arr if arr else None


def _names(arr: Any) -> list[str]:
    g, out, i = _lib(), [], 0
    while arr is not None and arr[i]:
        out.append(g.ggml_backend_buft_name(arr[i]).decode())
        i += 1
    return out


def in_use() -> list[str]:
    """The extra buffer types a model loaded now would use, in llama.cpp's order."""
    return _names(_extra_array())


def drop(names: Iterable[str]) -> list[str]:
    """Remove the named extra buffer types for this process; the ones left, in order."""
    arr = _extra_array()
    unwanted = set(names)
    if arr is None or not unwanted:
        return _names(arr)
    kept = [arr[i] for i, name in enumerate(_names(arr)) if name not in unwanted]
    count = len(_names(arr))
    for i in range(count):  # shift within the array llama.cpp owns; NULL-pad the tail
        arr[i] = kept[i] if i < len(kept) else None
    return _names(arr)


def cpu_features() -> dict[str, str]:
    """The ISA features llama.cpp's CPU backend was built for (`ggml_backend_get_features`)."""
    g = _lib()
    dev = g.ggml_backend_dev_by_type(_CPU)
    reg = g.ggml_backend_dev_backend_reg(dev) if dev else None
    addr = g.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features") if reg else None
    if not addr:
        return {}

    class Feature(ctypes.Structure):
        _fields_ = (("name", ctypes.c_char_p), ("value", ctypes.c_char_p))

    features = ctypes.CFUNCTYPE(ctypes.POINTER(Feature), ctypes.c_void_p)(addr)(reg)
    out, i = {}, 0
    while features and features[i].name:
        out[features[i].name.decode()] = (features[i].value or b"").decode()
        i += 1
    return out
