"""Which of llama.cpp's "extra buffer types" run on this CPU? Asked once per machine.

Extra buffer types are llama.cpp's AMX tile kernels and its weights repacked at load for
AVX2/AVX-512/NEON (Q4_0 decodes noticeably faster with them). Some machines advertise AMX in
/proc/cpuinfo and let the kernel grant the tile state, yet the first `tilezero` raises SIGILL
(seen on Xeon VMs): the whole process dies and nothing in-process can catch it. So the answer
comes from a child process that loads tiny q8_0 and q4_0 GGUFs through our own runtime with
extra buffer types on and decodes a few tokens. Exit 0: on. Killed by a signal, a non-zero exit
or no answer within the timeout: the child is run again without the likeliest culprit (AMX
first, the repacked kernels last; llm_kernels.py removes one type from llama.cpp's list), until
one runs or none is left; the server says what it turned off, and why, in one WARNING line.

The verdict is cached on disk, keyed by the llama-cpp-python version, the CPU model and a hash of
the CPU flags, so the child runs once per machine and build. Delete the file named in the warning
to probe again. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeinfer.runtime.llm_backends import loaded_variant

log = logging.getLogger("edgeinfer.llm")

TIMEOUT_S = 60.0
PROBE_TYPES = ("q8_0", "q4_0")  # AMX handles both; the CPU repack mainly Q4_0
PROBE_VERSION = 2  # 2: one extra buffer type turned off at a time (1 turned off all of them)
WITHOUT_ENV = "EDGEINFER_PROBE_WITHOUT"  # tells the child which types to drop (comma list)
_LAST = "CPU_REPACK"  # suspected last: the kernels every x86/ARM build has and wants


@dataclass(frozen=True)
class Verdict:
    enabled: bool
    reason: str  # why it is off (or "the probe decoded" when on)
    key: str  # what the verdict is cached under: llama-cpp-python version | CPU | flags hash
    path: str  # the cache file
    disabled: tuple[str, ...] = ()  # extra buffer types turned off (they failed the probe)
    kernels: tuple[str, ...] = ()  # the extra buffer types in use, when the child said


def probe_key(llama_cpp_version: str, cpu_model: str, cpu_flags: Sequence[str]) -> str:
    flags = hashlib.sha256(" ".join(sorted(cpu_flags)).encode()).hexdigest()[:16]
    return (
        f"llama-cpp-python {llama_cpp_version} | {cpu_model or 'unknown CPU'} | flags {flags}"
        f" | probe {PROBE_VERSION}"
    )


def this_machine() -> str:
    """The cache key of this machine and llama-cpp-python build."""
    from edgeinfer.hardware import read_cpuinfo

    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    # A build with run-time CPU variants: the one loaded has its own kernels (AMX or not).
    variant = loaded_variant()
    if variant:
        version = f"{version} {variant}"
    cpu = read_cpuinfo("/")
    return probe_key(version, cpu.model, sorted(cpu.flags))


def default_cache_dir() -> Path:
    """`llm-probe` beside the demo repository: $EDGEINFER_HOME or ~/.cache/edgeinfer."""
    from edgeinfer.config import edgeinfer_home

    return edgeinfer_home() / "llm-probe"


def child_command() -> list[str]:
    return [sys.executable, "-m", "edgeinfer.runtime.llm_probe"]


def verdict(
    key: str | None = None,
    cache_dir: Path | None = None,
    command: Sequence[str] | None = None,
    timeout: float = TIMEOUT_S,
) -> Verdict:
    """The cached verdict for `key` (default: this machine), or run `command` (default: the
    probe child; the child gets the cache folder as its last argument) and cache what it says."""
    key = key or this_machine()
    folder = cache_dir or default_cache_dir()
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key and isinstance(cached.get("enabled"), bool):
            return Verdict(
                cached["enabled"],
                str(cached.get("reason", "")),
                key,
                str(path),
                tuple(cached.get("disabled", ())),
                tuple(cached.get("kernels", ())),
            )
    except (OSError, ValueError, TypeError):
        pass  # no verdict yet (or a torn one): probe
    cmd = list(command or child_command())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        result = replace(_staged(cmd, str(folder), timeout), key=key, path=str(path))
    except OSError:  # a read-only cache: probe in a scratch folder, remember nothing
        with tempfile.TemporaryDirectory(prefix="edgeinfer-probe-") as scratch:
            return replace(_staged(cmd, scratch, timeout), key=key, path="")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(result), indent=2) + "\n")
        os.replace(tmp, path)  # concurrent probes write the same answer; readers never see half
    except OSError as e:
        log.debug("could not cache the extra-buffer-types verdict in %s: %s", path, e)
    return result


def _staged(cmd: list[str], folder: str, timeout: float) -> Verdict:
    """Probe with every extra buffer type, then without one more suspect at a time."""
    without: list[str] = []
    enabled, reason, seen = _run(cmd, folder, timeout, without)
    first = reason
    available = list(seen.get("available", ()))
    while not enabled:
        suspects = [n for n in available if n not in without]
        if not suspects:
            return Verdict(False, first, "", "", tuple(without))
        suspects.sort(key=lambda n: (n != "AMX", n == _LAST))
        without.append(suspects[0])
        enabled, _, seen = _run(cmd, folder, timeout, without)
    kernels = tuple(seen.get("kernels", ()))
    if without:
        reason = (
            f"{first}; without {', '.join(without)} the probe decoded, so "
            f"{', '.join(kernels) or 'no extra buffer type'} stays on"
        )
    return Verdict(True, reason, "", "", tuple(without), kernels)


def _run(
    cmd: list[str], folder: str, timeout: float, without: Sequence[str]
) -> tuple[bool, str, dict[str, Any]]:
    """(decoded, why not, what the child said it had: {"available", "kernels"})."""
    env = {**os.environ, WITHOUT_ENV: ",".join(without)}
    try:
        proc = subprocess.run(
            [*cmd, folder],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        return (
            False,
            (f"the probe of llama.cpp's AMX/repacked kernels did not finish in {timeout:g} s"),
            _said(out or ""),
        )
    seen = _said(proc.stdout)
    ok, reason = _fate(proc)
    return ok, reason, seen


def _said(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


def _fate(proc: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    if proc.returncode == 0:
        return True, "the probe decoded with extra buffer types on"
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return False, f"llama.cpp's AMX/repacked kernels crashed on this CPU ({name})"
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1][-300:]
    return False, f"the probe of llama.cpp's AMX/repacked kernels exited {proc.returncode}: {last}"


_lock = threading.Lock()
_decided: dict[str, Verdict] = {}  # per process: one probe and one warning, however many models


def extra_buffer_types(setting: str | bool) -> bool:
    """`[llm] extra_buffer_types` as a bool: true/false as given, "auto" from the verdict,
    with the types that failed the probe dropped from llama.cpp's list for this process."""
    if isinstance(setting, bool):
        return setting
    with _lock:
        key = this_machine()
        if key not in _decided:
            v = _decided[key] = verdict(key)
            again = f", or delete {v.path} to probe again" if v.path else ""
            if not v.enabled:
                log.warning(
                    "%s; loading GGUF models without extra buffer types (slower Q4_0; "
                    "[llm] extra_buffer_types = true forces them%s)",
                    v.reason,
                    again,
                )
            elif v.disabled:
                from edgeinfer.runtime import llm_kernels

                left = llm_kernels.drop(v.disabled)
                log.warning(
                    "%s; loading GGUF models with %s only ([llm] extra_buffer_types = "
                    "true forces all%s)",
                    v.reason,
                    ", ".join(left) or "none",
                    again,
                )
        return _decided[key].enabled


# ---- the child -------------------------------------------------------------------------------
def _probe(folder: Path) -> None:
    """Decode a prompt and a few single tokens of tiny quantized models, extra buffer types on."""
    from edgeinfer.config import LlmOptions
    from edgeinfer.runtime import llm_kernels
    from edgeinfer.runtime.gguf_writer import build_gguf
    from edgeinfer.runtime.llm_llamacpp import LlamaCppModel
    from edgeinfer.runtime.llm_types import BatchItem

    options = LlmOptions(
        context_length=64,
        slots=1,
        n_batch=64,
        prefill_chunk=32,
        kv_cache_type="f32",
        extra_buffer_types=True,
    )
    available = llm_kernels.in_use()
    without = [n for n in os.environ.get(WITHOUT_ENV, "").split(",") if n]
    kernels = llm_kernels.drop(without)
    # Said before anything can crash, so the parent knows what to try without.
    print(json.dumps({"available": available, "kernels": kernels}), flush=True)
    for qtype in PROBE_TYPES:
        path = folder / f"probe-tiny-{qtype}.gguf"
        if not path.is_file():
            tmp = folder / f"probe-tiny-{qtype}.{os.getpid()}.tmp.gguf"
            build_gguf(tmp, "tiny", qtype, seed=0)
            os.replace(tmp, path)
        model = LlamaCppModel(path, options, threads=1)
        try:
            tokens = model.tokenize("Edge inference runs a model next to the sensor.")
            rows = model.decode([BatchItem(0, tokens, 0, True)])  # a batch: the GEMM kernels
            for pos in range(len(tokens), len(tokens) + 3):  # one token: the GEMV kernels
                rows = model.decode([BatchItem(0, [int(rows[0].argmax())], pos, True)])
        finally:
            model.close()


if __name__ == "__main__":
    _probe(Path(sys.argv[1]))
