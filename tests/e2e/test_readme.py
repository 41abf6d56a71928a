"""The README's commands and examples work as written (against a server on free ports)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

from tests.helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str, section: str) -> list[str]:
    body = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, re.S)


def test_the_two_commands_exist_and_ci_runs_the_test_one() -> None:
    (cmds,) = _blocks("bash", "The two commands")
    assert "./scripts/demo" in cmds and "./scripts/test" in cmds
    for script in ("scripts/demo", "scripts/test"):
        text = (ROOT / script).read_text()
        assert "python3 -m venv .venv" in text and "pip install" in text
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert "edgeinfer serve --demo" in (ROOT / "scripts" / "demo").read_text()


def _localize(text: str, server: ServerProcess) -> str:
    return (text.replace("localhost:8000", server.http_addr)
                .replace("127.0.0.1:8000", server.http_addr)
                .replace("127.0.0.1:8001", server.grpc_addr))  # fmt: skip


def test_curl_example(demo_server: ServerProcess) -> None:
    (example,) = _blocks("bash", "Example")
    script = _localize(example.replace("./scripts/demo &", ""), demo_server)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "200"
    docs = [orjson.loads(line) for line in lines[1:]]
    assert docs[0]["name"] == "digits"
    logits = docs[1]["outputs"][0]["data"]
    assert max(range(10), key=lambda i: logits[i]) == 0
    assert len(docs[2]["data"]) == 2 and len(docs[2]["data"][0]["embedding"]) == 384


def test_python_example(demo_server: ServerProcess) -> None:
    (example,) = _blocks("python", "Example")
    out = subprocess.run([sys.executable, "-c", _localize(example, demo_server)],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    top3, shape = out.splitlines()[:2]
    assert top3.startswith("['") and ":985:daisy'" in top3.split(",")[0]  # a photo's labels
    assert shape == "(1, 384)"
