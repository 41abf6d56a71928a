"""The Kubernetes/KServe manifests in deploy/ agree with the CLI and the Dockerfile."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeinfer.cli import build_parser
from edgeinfer.config import ConfigError, ServerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(kind: str) -> dict[str, Any]:
    found = [d for p in sorted(DEPLOY.rglob("*.yaml")) for d in _docs(p) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/, found {len(found)}"
    return found[0]


def _settings(args: list[str]) -> ServerSettings:
    """What `edgeinfer serve ARGS` would run with (the image's ENTRYPOINT is `edgeinfer serve`):
    unknown flags or invalid values fail here as they would in the pod."""
    ns = build_parser().parse_args(["serve", *args])
    kwargs = {f.name: getattr(ns, f.name) for f in fields(ServerSettings)
              if f.name not in ("repository", "load_models", "overrides")}  # fmt: skip
    kwargs["model_control"] = kwargs["model_control"] or "explicit"
    return ServerSettings(repository=ns.repository, **kwargs)


def _image_user() -> int:
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    return int(re.findall(r"^USER (\d+)", final, re.M)[-1])


def test_every_manifest_parses_and_names_its_kind() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml"))
    assert paths
    for p in paths:
        for doc in _docs(p):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), p
            assert doc["metadata"].get("name"), p


def test_kserve_runtime_serves_onnx_over_v2_with_our_flags_and_ports() -> None:
    rt = _one("ClusterServingRuntime")
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = rt["spec"]
    assert "onnx" in {f["name"] for f in spec["supportedModelFormats"]}
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container" and c["image"]
    s = _settings(c["args"])
    assert str(s.repository) == "/mnt/models"  # where KServe's storage initializer writes
    assert (s.http_port, s.grpc_port) == (8080, 8081)
    assert s.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http1": s.http_port}  # Knative routes one port: REST v2
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(s.http_port)
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["runAsUser"] == _image_user()
    isvc = _one("InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"] and model["modelFormat"]["name"] == "onnx"


def test_deployment_and_service_match_the_cli_and_the_image() -> None:
    dep, svc = _one("Deployment"), _one("Service")
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    s = _settings(c["args"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": s.http_port, "grpc": s.grpc_port}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    known = {f"EDGEINFER_{f.name.upper()}" for f in fields(ServerSettings)}
    env = {e["name"]: e for e in c["env"]}
    assert set(env) <= known, set(env) - known
    assert env["EDGEINFER_REGISTRY"]["value"].startswith("etcd://")
    assert env["EDGEINFER_DEVICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(s.repository) in mounts  # the fleet writes fetched versions there
    assert s.api_keys and str(Path(s.api_keys).parent) in mounts
    assert pod["spec"]["securityContext"]["runAsUser"] == _image_user()


def test_image_defaults_match_the_manifests() -> None:
    env = dict(re.findall(r"(EDGEINFER_\w+)=(\S+)", DOCKERFILE))
    assert (env["EDGEINFER_HTTP_PORT"], env["EDGEINFER_GRPC_PORT"]) == ("8080", "8081")
    exposed = re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.M)[-1].split()
    assert exposed == ["8080", "8081"]
    assert '"/v2/health/ready"' in DOCKERFILE or "/v2/health/ready" in DOCKERFILE
    assert 'ENTRYPOINT ["edgeinfer", "serve"]' in DOCKERFILE


def test_fleet_flags_on_serve() -> None:
    s = _settings(["--registry", "etcd://10.0.0.2:2379/fleet", "--device-id", "pi-7",
                   "--device-group", "store-12"])  # fmt: skip
    assert (s.registry, s.device_id, s.device_group) == ("etcd://10.0.0.2:2379/fleet", "pi-7",
                                                         "store-12")  # fmt: skip
    with pytest.raises(ConfigError, match="etcd://"):
        _settings(["--registry", "http://x"])
    with pytest.raises(ConfigError, match="explicit"):
        _settings(["--registry", "etcd://x/y", "--model-control", "none"])
