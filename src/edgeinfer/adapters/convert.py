"""PEFT LoRA -> the base model's adapter format, and ONNX base graphs -> LoRA-ready graphs.

A PEFT adapter is a directory with `adapter_config.json` (`r`, `lora_alpha`, ...) and
`adapter_model.safetensors` holding `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight`
[out, r] per target module (torch Linear layout). Read with `safetensors`' numpy API.

- GGUF bases (llama.cpp): a GGUF LoRA (`general.type = adapter`, `adapter.lora.alpha`,
  `blk.N.<tensor>.weight.lora_a` [r, in] / `.lora_b` [out, r]); HF module names are mapped to
  GGUF tensor names, and q/k rows are permuted the way llama.cpp's HF converter permutes the base
  weights (rotary layout). llama.cpp applies scale = alpha / r, as PEFT does.
- ONNX bases: an `.onnx_adapter` for graphs rewritten by `runtime.lora_onnx.add_lora`; the
  target is the MatMul weight initializer named by the module's last component, A = lora_A^T,
  B = lora_B^T * alpha / r.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.adapters.store import adapter_file
from edgeinfer.errors import InvalidInput
from edgeinfer.repository.manifest import MANIFEST_NAME, version_number

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20  # PEFT configs are a few hundred bytes
_HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)$")


def read_peft(peft_dir: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float, int]:
    """(module -> (lora_A [r, in], lora_B [out, r]), alpha, r) of a PEFT adapter directory."""
    from safetensors.numpy import load_file

    weights = peft_dir / PEFT_WEIGHTS
    if not weights.is_file():
        raise InvalidInput(f"{peft_dir}: no {PEFT_WEIGHTS} (not a PEFT LoRA directory)")
    cfg = _read_config(peft_dir / PEFT_CONFIG)
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type for a malformed file
        raise InvalidInput(f"{weights}: not a readable safetensors file: {e}") from None
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise InvalidInput(f"{weights}: '{key}' has no matching lora_B")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise InvalidInput(
                f"{weights}: module '{module}': lora_A {a.shape} and lora_B "
                f"{b.shape} do not share a rank (want [r, in] and [out, r])"
            )
        pairs[module] = (a.astype(np.float32), b.astype(np.float32))
    if not pairs:
        raise InvalidInput(f"{weights}: no '<module>.lora_A.weight' tensors")
    ranks = {a.shape[0] for a, _ in pairs.values()}
    r, alpha = cfg.get("r", max(ranks)), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or ranks != {r}:
        raise InvalidInput(
            f"{peft_dir}: adapter_config r = {r!r} but the tensors have ranks {sorted(ranks)}"
        )
    if alpha is None:
        alpha = r
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise InvalidInput(f"{peft_dir}: adapter_config lora_alpha must be a number")
    return pairs, float(alpha), r


def _read_config(path: Path) -> dict[str, Any]:
    """adapter_config.json, its size checked before it is read."""
    if not path.is_file():
        return {}
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InvalidInput(
            f"{path} is {size} bytes; an adapter config may have at most {MAX_CONFIG_BYTES}"
        )
    try:
        cfg = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{path}: not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InvalidInput(f"{path}: must hold a JSON object")
    return cfg


def _gguf_name(module: str) -> str | None:
    m = _LAYER.search(module)
    if m is None or m.group(2) not in _HF_TO_GGUF:
        return None
    return f"blk.{m.group(1)}.{_HF_TO_GGUF[m.group(2)]}.weight"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's HF converter's rotary permutation of q/k output rows."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def peft_to_gguf(peft_dir: Path, base_gguf: Path, out: Path) -> Path:
    import gguf

    pairs, alpha, _ = read_peft(peft_dir)
    reader = gguf.GGUFReader(str(base_gguf))
    arch = str(reader.fields["general.architecture"].contents())
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # (in, out)

    def meta(key: str) -> int:
        f = reader.fields.get(f"{arch}.{key}")
        return int(f.contents()) if f is not None else 0

    n_head, n_kv = meta("attention.head_count"), meta("attention.head_count_kv")
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    problems = []
    for module, (a, b) in sorted(pairs.items()):
        name = _gguf_name(module)
        if name is None or name not in shapes:
            problems.append(
                f"module '{module}' has no tensor in {base_gguf.name}"
                + (f" (looked for {name})" if name else "")
            )
            continue
        d_in, d_out = shapes[name][0], shapes[name][1]
        if a.shape[1] != d_in or b.shape[0] != d_out:
            problems.append(
                f"module '{module}': LoRA maps {a.shape[1]} -> {b.shape[0]} but "
                f"{name} maps {d_in} -> {d_out}"
            )
            continue
        if name.endswith("attn_q.weight") and n_head:
            b = _permute(b, n_head)
        elif name.endswith("attn_k.weight") and n_kv:
            b = _permute(b, n_kv)
        writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a, np.float32))
        writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b, np.float32))
    if problems:
        writer.close()
        out.unlink(missing_ok=True)
        raise InvalidInput("the adapter does not match the base model: " + "; ".join(problems))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def peft_to_onnx_adapter(peft_dir: Path, base_onnx: Path, out: Path) -> Path:
    import onnx

    from edgeinfer.runtime.lora_onnx import LoraSpec, export_onnx_adapter, matmul_targets

    pairs, alpha, r = read_peft(peft_dir)
    spec = LoraSpec.read(base_onnx.parent)
    targets = (
        spec.targets
        if spec
        else matmul_targets(onnx.load(str(base_onnx), load_external_data=False))
    )
    weights, problems = {}, []
    for module, (a, b) in sorted(pairs.items()):
        t = module.split(".")[-1]
        if t not in targets:
            problems.append(
                f"module '{module}' is not a LoRA target of {base_onnx.name} "
                f"(targets: {sorted(targets)})"
            )
            continue
        d_in, d_out = targets[t]
        if a.shape[1] != d_in or b.shape[0] != d_out:
            problems.append(
                f"module '{module}': LoRA maps {a.shape[1]} -> {b.shape[0]} but "
                f"'{t}' maps {d_in} -> {d_out}"
            )
            continue
        if spec is not None and spec.mode == "stacked" and r > spec.rank:
            problems.append(f"rank {r} exceeds the stacked graph's rank {spec.rank}")
            continue
        weights[t] = (a.T.copy(), (b.T * (alpha / r)).astype(np.float32))
    if problems:
        raise InvalidInput("the adapter does not match the base model: " + "; ".join(problems))
    return export_onnx_adapter(out, weights)


def convert_peft(peft_dir: Path, base: Path, out: Path) -> Path:
    """PEFT directory -> `out` in the format of `base` (model.gguf or model.onnx)."""
    if base.suffix == ".gguf":
        return peft_to_gguf(peft_dir, base, out.with_suffix(".gguf"))
    if base.suffix == ".onnx":
        return peft_to_onnx_adapter(peft_dir, base, out.with_suffix(".onnx_adapter"))
    raise InvalidInput(f"{base}: the base must be a .gguf or .onnx model file")


def convert_graph(
    base_onnx: Path, out_dir: Path, targets: list[str], stacked: bool, rank: int
) -> Path:
    """Write `out_dir/model.onnx` (LoRA-ready) and `out_dir/lora.json`."""
    import onnx

    from edgeinfer.runtime.lora_onnx import add_lora, matmul_targets

    model = onnx.load(str(base_onnx))
    model, spec = add_lora(
        model, targets or sorted(matmul_targets(model)), "stacked" if stacked else "per_run", rank
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    spec.write(out_dir)
    return out_dir


def resolve_adapter_path(path: Path, base_file: Path, name: str) -> tuple[Path, Path | None]:
    """The adapter file for a load request: a GGUF LoRA or .onnx_adapter file, an adapter
    version directory, an adapter directory (its newest version) or a PEFT directory
    (converted for `base_file` into a private temporary directory, returned second: the caller
    owns it; it is removed here if the conversion fails)."""
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise InvalidInput(f"lora_path {path}: not a file or directory")
    if (path / MANIFEST_NAME).is_file():
        return adapter_file(path), None
    versions = sorted(n for p in path.iterdir() if (n := version_number(p.name)) is not None)
    if versions and (path / str(versions[-1]) / MANIFEST_NAME).is_file():
        return adapter_file(path / str(versions[-1])), None
    tmp = Path(tempfile.mkdtemp(prefix=f"edgeinfer-lora-{name}-"))
    try:
        return convert_peft(path, base_file, tmp / "adapter"), tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_peft(
    out_dir: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float, r: int
) -> Path:
    """A PEFT-style adapter directory (for tests, demos and benchmarks)."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    for module, (a, b) in pairs.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    save_file(tensors, str(out_dir / PEFT_WEIGHTS))
    (out_dir / PEFT_CONFIG).write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": r,
                "lora_alpha": alpha,
                "target_modules": sorted({m.split(".")[-1] for m in pairs}),
            }
        )
    )
    return out_dir
