"""GET /openapi.json describes every route, and schemathesis fuzzes every operation of a real
server against it: no 5xx other than the documented 503/504, and every response conforms.

Bounded for CI (EXAMPLES per operation and mode); `FUZZ_LONG=1` runs many more (see docs/security.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from edgeinfer.config import ServerSettings
from edgeinfer.lifecycle import Engine
from edgeinfer.repository import Repository
from edgeinfer.server import openapi
from edgeinfer.server.app import build_app
from tests.helpers import ServerProcess, serve

LONG = os.environ.get("FUZZ_LONG") == "1"
EXAMPLES = 300 if LONG else 12
MODELS = ["mlp", "ids", "nope"]  # two real models and one that is not there
VERSIONS = ["1", "2", "9"]


@pytest.fixture(scope="module")
def fuzz_server(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # A private copy: the fuzzer rolls back, unloads and sets canaries (state.json on disk).
    d = tmp_path_factory.mktemp("fuzz")
    repo = shutil.copytree(tiny_repo, d / "repo")
    with serve(repo, d / "server.log", "--max-request-bytes", "65536") as server:
        yield server


def test_schema_lists_every_route_and_nothing_else(tiny_repo: Path) -> None:
    settings = ServerSettings()
    app = build_app(Engine(Repository(tiny_repo), settings), settings)
    doc = openapi.document(app.routes, auth_enabled=False, open_metrics=True)
    in_app = set(openapi.route_operations(app.routes))
    in_doc = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert in_app == in_doc
    assert ("GET", "/openapi.json") in in_app
    undocumented = sorted(f"{m.upper()} {p}" for p, ops in doc["paths"].items()
                          for m, op in ops.items() if op.get("x-edgeinfer-undocumented"))  # fmt: skip
    assert not undocumented, (
        f"describe these routes in server/openapi_operations.py: {undocumented}"
    )
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    refs = {r.rsplit("/", 1)[1] for r in _refs(doc)}
    assert refs <= set(doc["components"]["schemas"]) | set(doc["components"]["responses"])


def test_served_schema_matches_the_app_and_auth(fuzz_server: ServerProcess) -> None:
    r = httpx.get(fuzz_server.url + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]
    assert set(infer["responses"]) == {"200", "400", "404", "413", "429", "503", "504"}
    assert "security" not in infer  # no keys on this server: no 401/403 either
    settings = ServerSettings()
    app = build_app(Engine(Repository(Path(".")), settings), settings)
    secured = openapi.document(app.routes, auth_enabled=True, open_metrics=False)
    op = secured["paths"]["/v2/repository/models/{model}/unload"]["post"]
    assert op["x-edgeinfer-role"] == "admin" and op["security"] == [{"apiKey": []}]
    assert {"401", "403", "429"} <= set(op["responses"])
    assert secured["paths"]["/openapi.json"]["get"]["security"] == []
    assert secured["paths"]["/metrics"]["get"]["x-edgeinfer-role"] == "infer"
    emb = secured["paths"]["/v1/embeddings"]["post"]["responses"]
    assert emb["400"]["$ref"].endswith("OpenAIError400")
    assert emb["401"]["$ref"].endswith("/Error401")  # the middleware's plain body
    assert "403" not in emb  # every key may infer: only admin routes can answer 403
    assert emb["429"]["$ref"].endswith("EitherError429")  # queue full (OpenAI) or auth (plain)


def test_schema_is_open_and_describes_auth_when_keys_are_on(
    tiny_repo: Path, tmp_path: Path
) -> None:
    from tests.integration.test_security import create_key

    keys = tmp_path / "keys.toml"
    create_key(keys, "infer")
    with serve(tiny_repo, tmp_path / "log", "--api-keys", str(keys)) as server:
        doc = httpx.get(server.url + "/openapi.json").json()  # no key needed
        assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        op = doc["paths"]["/v2/models/{model}/infer"]["post"]
        r = httpx.post(server.url + "/v2/models/mlp/infer", json={"inputs": []})
        assert str(r.status_code) in op["responses"] and set(r.json()) == {"error"}
        assert doc["paths"]["/v2/health/ready"]["get"]["security"] == []


def test_unknown_route_and_method_use_the_error_shape(fuzz_server: ServerProcess) -> None:
    r = httpx.get(fuzz_server.url + "/v3/nothing")
    assert r.status_code == 404 and r.json() == {"error": "no route GET /v3/nothing"}
    r = httpx.delete(fuzz_server.url + "/v2/models/mlp/infer")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]
    assert r.headers["allow"] == "POST"  # RFC 9110: a 405 says what is allowed


def test_regressions_found_by_fuzzing(fuzz_server: ServerProcess) -> None:
    url = fuzz_server.url
    # Lifecycle status of a model that is not in the repository was a 500 (the lookup ran
    # outside the handler's error mapping).
    for r in (httpx.get(f"{url}/v2/repository/models/nope/status"),
              httpx.post(f"{url}/v2/repository/models/nope/status", json={"version": "1"})):  # fmt: skip
        assert r.status_code == 404 and "not in the repository" in r.json()["error"]
    # Non-object `parameters` (generate) and `stream_options` (OpenAI) raised AttributeError /
    # ValueError outside the error mapping: 500.
    r = httpx.post(f"{url}/v2/models/mlp/generate", json={"text_input": "x", "parameters": [{}]})
    assert r.status_code == 400 and "'parameters' must be an object" in r.json()["error"]
    for path, body in (("completions", {"prompt": "x"}),
                       ("chat/completions", {"messages": [{"role": "user", "content": "x"}]})):  # fmt: skip
        r = httpx.post(f"{url}/v1/{path}", json={"model": "mlp", "stream_options": "x", **body})
        assert r.status_code == 400 and "stream_options" in r.json()["error"]["message"]
    # The repository index read any body whole, however large.
    r = httpx.post(f"{url}/v2/repository/index", content=b" " * 100_000)
    assert r.status_code == 413


def test_client_leaving_mid_body_is_not_an_error(fuzz_server: ServerProcess) -> None:
    # Found by the soak: Starlette's ClientDisconnect escaped read_body, so every client that
    # left mid-body logged "unexpected error" with a traceback (a way to flood the log).
    before = fuzz_server.log().count("Traceback")
    for path in ("/v2/models/mlp/infer", "/v1/embeddings", "/v2/repository/index"):
        with socket.create_connection(("127.0.0.1", fuzz_server.http_port)) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
    assert httpx.get(fuzz_server.url + "/v2/health/live").status_code == 200
    time.sleep(0.5)  # kept: it waits for a log line NOT to appear, there is nothing to poll
    assert fuzz_server.log().count("Traceback") == before, fuzz_server.log()[-3000:]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _fuzz_schema(doc: dict[str, Any]) -> Any:
    """The served document, with path parameters narrowed to names that exist (plus one that
    does not) so the fuzzer reaches the models instead of 404 every time."""
    import schemathesis

    for ops in doc["paths"].values():
        for op in ops.values():
            for p in op.get("parameters", []):
                if p["in"] == "path" and p["name"] == "model":
                    p["schema"] = {"type": "string", "enum": MODELS}
                elif p["in"] == "path" and p["name"] == "version":
                    p["schema"] = {"type": "string", "enum": VERSIONS}
    return schemathesis.openapi.from_dict(doc)


def _no_server_error(ctx: Any, response: Any, case: Any) -> None:
    # 503 (not ready: the fuzzer unloads models) and 504 are documented; nothing else is.
    if response.status_code >= 500 and response.status_code not in (503, 504):
        raise AssertionError(f"{response.status_code} from {case.method} {case.path}: "
                             f"{response.text[:300]}")  # fmt: skip


def _fuzz(op: Any, mode: Any, url: str, session: requests.Session, tried: dict[str, int]) -> None:
    """One hypothesis run of EXAMPLES cases of one operation in one generation mode."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [_no_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance, response_headers_conformance]  # fmt: skip

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=url, session=session, timeout=30)
        tried[op.label] = tried.get(op.label, 0) + 1
        case.validate_response(response, checks=checks)

    run()


@pytest.mark.timeout(7200 if LONG else 300)
def test_fuzz_every_operation(fuzz_server: ServerProcess) -> None:
    from schemathesis import GenerationMode

    doc = httpx.get(fuzz_server.url + "/openapi.json").json()
    operations = [result.ok() for result in _fuzz_schema(doc).get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in doc["paths"].values())
    tried: dict[str, int] = {}
    with requests.Session() as session:
        for op in operations:
            spec = doc["paths"][op.path][op.method.lower()]
            _fuzz(op, GenerationMode.POSITIVE, fuzz_server.url, session, tried)
            if "parameters" in spec or "requestBody" in spec:  # else nothing to make invalid
                _fuzz(op, GenerationMode.NEGATIVE, fuzz_server.url, session, tried)
    assert fuzz_server.proc.poll() is None, fuzz_server.log()
    assert set(tried) == {op.label for op in operations}
    assert httpx.get(fuzz_server.url + "/v2/health/live").status_code == 200
