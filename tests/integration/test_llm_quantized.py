"""Quantized GGUFs (q8_0, q4_0) served by the real server. On CPUs where llama.cpp's AMX or
repacked kernels raise SIGILL (Xeon VMs that advertise AMX), this crashed the whole server on the
first decode; now a probe in a child process decides, once, whether to load with llama.cpp's
extra buffer types, and the server keeps running either way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import llama_cpp  # noqa: F401  (missing: these tests fail, never skip)
import pytest

from tests.helpers import ServerProcess, serve

TYPES = ("q8_0", "q4_0")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh EDGEINFER_HOME: no cached verdict, so the server runs the probe itself."""
    return tmp_path_factory.mktemp("edgeinfer-home")


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from edgeinfer.repository import add_version
    from edgeinfer.runtime.gguf_writer import build_gguf

    root = tmp_path_factory.mktemp("llm-quantized")
    scratch = tmp_path_factory.mktemp("scratch")
    for qtype in TYPES:
        build_gguf(scratch / f"{qtype}.gguf", "tiny", qtype, seed=0)
        (root / qtype).mkdir()
        (root / qtype / "config.toml").write_text(
            'backend = "llama.cpp"\n[llm]\ncontext_length = 256\nslots = 2\n'
        )
        add_version(root / qtype, {"model.gguf": scratch / f"{qtype}.gguf"})
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with serve(root, log, env={"EDGEINFER_HOME": str(home)}) as s:
        yield s


@pytest.mark.parametrize("qtype", TYPES)
def test_a_quantized_model_completes_and_the_server_lives(server: ServerProcess,
                                                          qtype: str) -> None:  # fmt: skip
    body = {"model": qtype, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["text"] and out["usage"]["completion_tokens"] == 16
    assert server.proc.poll() is None


def test_the_probe_verdict_is_cached_and_explained(server: ServerProcess, home: Path) -> None:
    (cached,) = (home / "llm-probe").glob("*.json")
    v = json.loads(cached.read_text())
    assert "llama-cpp-python" in v["key"]
    warnings = [line for line in server.log().splitlines() if "extra buffer types" in line]
    if v["enabled"]:
        assert warnings == []
    else:  # one line, however many models loaded
        assert len(warnings) == 1 and v["reason"] in warnings[0], server.log()
