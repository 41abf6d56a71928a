"""The 3-minute soak (bench/soak.py) as CI runs it: mixed HTTP/gRPC/OpenAI traffic, adapter
switches (ONNX LoRA over KServe, the demo's GGUF LoRA over OpenAI chat), hot reloads, malformed
requests and disconnects against a real server on the tiny models and the demo repository; it
exits non-zero when an invariant fails. Named to run last among the e2e tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


@pytest.mark.timeout(600)
def test_three_minute_soak(demo_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak-3m.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "3", "--demo", str(demo_repo), "--out", str(out)],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert out.is_file(), proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert proc.returncode == 0 and doc["passed"], (
        json.dumps({k: doc[k] for k in ("invariants", "five_xx", "first_failures", "resources")},
                   indent=1) + proc.stderr[-3000:]
    )  # fmt: skip
    kinds = doc["requests"]
    for kind in ("http_mlp_json", "http_mlp_binary", "http_ids_json", "grpc_mlp", "grpc_ids",
                 "pipelined", "embeddings",
                 # LoRA: base and adapter requests switching on the same models (outputs checked
                 # against numpy), and chats alternating llm-demo / llm-demo:demo-adapter
                 "http_lora", "http_lora_adapter", "grpc_lora", "grpc_lora_adapter",
                 "llm_chat", "llm_chat_adapter"):  # fmt: skip
        assert kinds[kind].get("ok", 0) > 0, kind
    assert kinds["disconnect"]["aborted"] > 0 and kinds["malformed"]
    assert len(doc["reloads"]) >= 2
