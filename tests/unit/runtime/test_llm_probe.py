"""The extra-buffer-types verdict: cached per key, re-probed when the key changes, and every way
a probe child can fail counted as off. The child here is a stand-in for the hardware (a script
that exits, crashes with SIGILL or hangs); the caching and the reading of its fate are real."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgeinfer.config import ConfigError, LlmOptions
from edgeinfer.runtime.llm_probe import extra_buffer_types, probe_key, verdict

# Appends a line to <folder>/runs (the folder is the last argument), then behaves as told.
_CHILD = """
import json, os, signal, sys, time
folder = sys.argv[-1]
with open(os.path.join(folder, "runs"), "a") as f:
    f.write("run\\n")
how = sys.argv[1]
without = [n for n in os.environ.get("EDGEINFER_PROBE_WITHOUT", "").split(",") if n]
if how.startswith("has:"):  # has:AMX,CPU_REPACK:crash-on:AMX  (as the real child reports)
    _, have, _, bad = how.split(":")
    have = have.split(",")
    print('{"available": %s, "kernels": %s}' % (
        json.dumps(have), json.dumps([n for n in have if n not in without])), flush=True)
    if any(n in have and n not in without for n in bad.split(",")):
        os.kill(os.getpid(), signal.SIGILL)
elif how == "sigill":
    os.kill(os.getpid(), signal.SIGILL)
elif how == "hang":
    time.sleep(30)  # a probe child that hangs: the behaviour under test
elif how == "fail":
    sys.exit("ImportError: no module named gguf")
"""

KEY = probe_key("0.3.36", "Intel(R) Xeon(R) Processor", ["fpu", "avx2", "amx_tile"])


def child(how: str) -> list[str]:
    return [sys.executable, "-c", _CHILD, how]


def runs(folder: Path) -> int:
    path = folder / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_verdict_is_cached_per_key_and_reprobed_when_the_key_changes(tmp_path: Path) -> None:
    first = verdict(KEY, tmp_path, child("ok"))
    assert first.enabled and runs(tmp_path) == 1
    assert json.loads(Path(first.path).read_text())["key"] == KEY
    again = verdict(KEY, tmp_path, child("sigill"))  # would crash: must not run
    assert again == first and runs(tmp_path) == 1
    upgraded = probe_key("0.3.37", "Intel(R) Xeon(R) Processor", ["fpu", "avx2", "amx_tile"])
    other_cpu = probe_key("0.3.36", "Intel(R) Xeon(R) Processor", ["fpu", "avx2"])
    assert len({KEY, upgraded, other_cpu}) == 3
    crashed = verdict(upgraded, tmp_path, child("sigill"))
    assert not crashed.enabled and runs(tmp_path) == 2
    assert "crashed on this CPU (SIGILL)" in crashed.reason
    assert verdict(upgraded, tmp_path, child("ok")) == crashed and runs(tmp_path) == 2
    assert verdict(KEY, tmp_path, child("sigill")) == first


def test_flag_order_does_not_change_the_key() -> None:
    assert probe_key("1", "cpu", ["b", "a"]) == probe_key("1", "cpu", ["a", "b"])


def test_a_hung_or_failing_probe_counts_as_off(tmp_path: Path) -> None:
    hung = verdict(KEY, tmp_path / "hang", child("hang"), timeout=1.0)
    assert not hung.enabled and "did not finish in 1 s" in hung.reason
    failed = verdict(KEY, tmp_path / "fail", child("fail"))
    assert not failed.enabled
    assert failed.reason.endswith("exited 1: ImportError: no module named gguf")


def test_a_torn_cache_file_is_probed_again(tmp_path: Path) -> None:
    first = verdict(KEY, tmp_path, child("ok"))
    Path(first.path).write_text('{"enabled": tr')
    assert verdict(KEY, tmp_path, child("ok")).enabled and runs(tmp_path) == 2


def test_an_unwritable_cache_still_gives_a_verdict(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    v = verdict(KEY, tmp_path / "a-file" / "llm-probe", child("sigill"))
    assert not v.enabled and v.path == "" and "SIGILL" in v.reason


def test_true_and_false_are_taken_as_given() -> None:
    assert extra_buffer_types(True) is True and extra_buffer_types(False) is False


@pytest.mark.parametrize("value", ["yes", 1, "true", None])
def test_the_setting_is_auto_true_or_false(value: object) -> None:
    with pytest.raises(ConfigError, match="extra_buffer_types must be"):
        LlmOptions(extra_buffer_types=value)  # type: ignore[arg-type]
    assert LlmOptions(extra_buffer_types=False).extra_buffer_types is False


def test_only_the_kernels_that_crash_are_turned_off(tmp_path: Path) -> None:
    v = verdict(KEY, tmp_path, child("has:AMX,CPU_REPACK:crash-on:AMX"))
    assert v.enabled and v.disabled == ("AMX",) and v.kernels == ("CPU_REPACK",)
    assert "crashed on this CPU (SIGILL)" in v.reason and runs(tmp_path) == 2
    assert verdict(KEY, tmp_path, child("sigill")) == v  # cached with what was turned off
    repack = verdict(KEY, tmp_path / "r", child("has:AMX,CPU_REPACK:crash-on:CPU_REPACK"))
    assert repack.disabled == ("AMX", "CPU_REPACK") and repack.kernels == ()
    assert runs(tmp_path / "r") == 3  # AMX is suspected first, the repacked kernels last
    both = verdict(KEY, tmp_path / "b", child("has:KleidiAI:crash-on:KleidiAI,"))
    assert both.enabled and both.disabled == ("KleidiAI",)


def test_a_child_that_names_nothing_is_not_retried(tmp_path: Path) -> None:
    v = verdict(KEY, tmp_path, child("sigill"))
    assert not v.enabled and v.disabled == () and runs(tmp_path) == 1
