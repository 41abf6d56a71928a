"""A model's configuration in Triton's model-config JSON shape (GET /v2/models/{m}/config).

perf_analyzer and other Triton tools read this, so field names follow model_config.proto.
"""

from __future__ import annotations

from typing import Any

from edgeinfer.config import ModelConfig
from edgeinfer.runtime import Model
from edgeinfer.types import TensorSpec

_TYPE = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def _io(specs: tuple[TensorSpec, ...], batched: bool) -> list[dict[str, Any]]:
    # Triton's dims exclude the batch axis when max_batch_size > 0.
    return [
        {
            "name": s.name,
            "data_type": _TYPE[s.datatype],
            "dims": [int(d) for d in (s.shape[1:] if batched and s.shape else s.shape)],
        }
        for s in specs
    ]


def _outputs(config: ModelConfig, model: Model, batched: bool) -> list[dict[str, Any]]:
    out = _io(model.outputs, batched)
    for o in out:
        opts = config.outputs.get(o["name"])
        if opts is not None and opts.label_filename:
            o["label_filename"] = opts.label_filename  # the classification extension's labels
    return out


def triton_model_config(config: ModelConfig, model: Model, backend: str) -> dict[str, Any]:
    policy = config.version_policy
    if policy.kind == "all":
        version_policy: dict[str, Any] = {"all": {}}
    elif policy.kind == "specific":
        version_policy = {"specific": {"versions": [int(v) for v in policy.specific]}}
    else:
        version_policy = {"latest": {"num_versions": policy.latest}}
    batched = config.max_batch_size > 0
    return {
        "name": config.name,
        "platform": model.platform,
        "backend": backend,
        "version_policy": version_policy,
        "max_batch_size": config.max_batch_size,
        "input": _io(model.inputs, batched),
        "output": _outputs(config, model, batched),
        "instance_group": [
            {"name": f"{config.name}_0", "kind": "KIND_CPU", "count": config.instance_count}
        ],
        "parameters": {k: {"string_value": v} for k, v in getattr(model, "parameters", {}).items()},
    }
