"""The baseline: the KServe v2 infer endpoint as most people would write it with FastAPI + ORT.

One plain `def` endpoint (FastAPI runs it in its default threadpool), stdlib `json`, numpy, and
`session.run`. It reads the same repository as edgeinfer and builds each session with edgeinfer's
own `session_options()` from the model's config.toml, so both servers run identical sessions; it
speaks the same KServe JSON and binary tensor bodies, so both get identical payloads.

    python bench/peer_fastapi.py --repository DIR --port P
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response

from edgeinfer.config import ModelConfig
from edgeinfer.runtime.onnx import session_options

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def load_sessions(repository: Path) -> dict[str, ort.InferenceSession]:
    sessions = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        config = ModelConfig.from_toml(model_dir / "config.toml", model_dir.name)
        latest = max(
            (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        sessions[model_dir.name] = ort.InferenceSession(
            str(latest / "model.onnx"), session_options(config.onnxruntime),
            providers=["CPUExecutionProvider"],
        )  # fmt: skip
    return sessions


async def raw_body(request: Request) -> bytes:
    return await request.body()


def build_app(sessions: dict[str, ort.InferenceSession]) -> FastAPI:
    app = FastAPI()

    @app.post("/v2/models/{model}/infer")
    def infer(
        model: str,
        body: bytes = Depends(raw_body),
        header_length: int | None = Header(None, alias="Inference-Header-Content-Length"),
    ) -> Any:
        session = sessions.get(model)
        if session is None:
            raise HTTPException(404, f"no model {model}")
        doc = json.loads(body[:header_length] if header_length else body)
        offset = header_length or 0
        feeds = {}
        for inp in doc["inputs"]:
            dtype = _DTYPES[inp["datatype"]]
            size = (inp.get("parameters") or {}).get("binary_data_size")
            if size is None:
                feeds[inp["name"]] = np.asarray(inp["data"], dtype=dtype).reshape(inp["shape"])
            else:
                data = np.frombuffer(body, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                     offset=offset)  # fmt: skip
                feeds[inp["name"]] = data.reshape(inp["shape"])
                offset += size
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
        wanted = {o["name"]: (o.get("parameters") or {}).get("binary_data", False)
                  for o in doc.get("outputs") or []}  # fmt: skip
        outputs, blobs = [], []
        for name, arr in zip(names, results, strict=True):
            entry: dict[str, Any] = {
                "name": name,
                "datatype": _NAMES[arr.dtype],
                "shape": list(arr.shape),
            }
            if wanted.get(name):
                blob = arr.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = arr.reshape(-1).tolist()
            outputs.append(entry)
        reply = {"model_name": model, "model_version": "1", "outputs": outputs}
        if not blobs:
            return reply
        head = json.dumps(reply).encode()
        return Response(head + b"".join(blobs), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip

    return app


def main() -> None:
    p = argparse.ArgumentParser(description="naive FastAPI + ONNX Runtime KServe v2 peer")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = build_app(load_sessions(args.repository))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
