"""Turning off one of llama.cpp's extra buffer types keeps the others, with the real llama.cpp:
a Q4_0 model loads its weights into an extra buffer (AMX where the CPU runs it, else CPU_REPACK)
and into CPU_REPACK once AMX is dropped, not once CPU_REPACK is, and
the probe child reports what it had and what it ran with. Each case runs in a fresh process:
the list llama.cpp hands the model loader is per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import llama_cpp  # noqa: F401  (missing: these tests fail, never skip)
import pytest

_LOAD = r"""
import ctypes, json, sys
import llama_cpp
logs = []
@llama_cpp.llama_log_callback
def keep(level, text, user):
    logs.append(text.decode(errors="replace"))
llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
from edgeinfer.runtime import llm_kernels
before = llm_kernels.in_use()
after = llm_kernels.drop([n for n in sys.argv[2].split(",") if n])
p = llama_cpp.llama_model_default_params()
p.use_extra_bufts = True
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), p)
assert model
buffers = sorted({line.split()[1] for line in "".join(logs).splitlines()
                  if "model buffer size" in line})
llama_cpp.llama_model_free(model)
print(json.dumps({"before": before, "after": after, "buffers": buffers}))
"""


@pytest.fixture(scope="module")
def q4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeinfer.runtime.gguf_writer import build_gguf

    path = tmp_path_factory.mktemp("kernels") / "tiny-q4_0.gguf"
    build_gguf(path, "tiny", "q4_0", seed=0)
    return path


def load(path: Path, drop: str) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", _LOAD, str(path), drop], capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return dict(json.loads(out.stdout.splitlines()[-1]))


def test_dropping_one_extra_buffer_type_keeps_the_rest(q4: Path) -> None:
    whole = load(q4, "")
    assert "CPU_REPACK" in whole["before"] and whole["after"] == whole["before"]
    # Q4_0 weights repacked at load: into AMX tiles on a CPU with working AMX, else CPU_REPACK
    assert {"AMX", "CPU_REPACK"} & set(whole["buffers"])
    amx_off = load(q4, "AMX")  # the probe's first suspect: absent or dropped, repack stays
    assert amx_off["after"] == [n for n in whole["before"] if n != "AMX"]
    assert "CPU_REPACK" in amx_off["buffers"] and "AMX" not in amx_off["buffers"]
    no_repack = load(q4, "CPU_REPACK")
    assert "CPU_REPACK" not in no_repack["after"] and "CPU_REPACK" not in no_repack["buffers"]


def test_the_probe_child_says_what_it_had_and_ran_with(tmp_path: Path) -> None:
    # AMX goes too: on an Intel Xeon with AMX, AMX without CPU_REPACK crashed llama.cpp (SIGSEGV
    # in the probe child), while both together and neither decoded. Where there is no AMX,
    # dropping it changes nothing.
    env = {**os.environ, "EDGEINFER_PROBE_WITHOUT": "AMX,CPU_REPACK"}
    out = subprocess.run([sys.executable, "-m", "edgeinfer.runtime.llm_probe", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env=env, check=True)  # fmt: skip
    said = json.loads(out.stdout.splitlines()[0])
    assert "CPU_REPACK" in said["available"] and "CPU_REPACK" not in said["kernels"]
    assert "AMX" not in said["kernels"]
