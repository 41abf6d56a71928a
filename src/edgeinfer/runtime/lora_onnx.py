"""LoRA on ONNX graphs: the graph rewrite, ORT's per-run adapters and stacked mixed-adapter runs.

A LoRA-ready version directory holds `model.onnx` rewritten by `add_lora` and `lora.json`:

    {"mode": "per_run" | "stacked", "rank": R, "targets": {"w1": [in, out], ...}}

Every target MatMul `Y = X @ W` becomes `Y = X @ W + (X @ A) @ B`, with the scale folded into B.
- per_run: A [in, r] and B [r, out] are graph inputs with zero defaults (initializers), so ORT's
  multi-LoRA (`RunOptions.add_active_adapter`) swaps them per run; the rank is symbolic, so
  adapters of different ranks share the session. One run serves one adapter: the batcher puts
  the adapter in the batch signature.
- stacked: `A_stack` [n, in, R] and `B_stack` [n, R, out] hold every resident adapter (slot 0
  is the base model: zeros) and an `adapter_index` [batch] input picks each row's slot
  (Gather + batched MatMul), so ONE run serves rows of different adapters. The stacks are bound
  as inputs on every run: adding or removing an adapter rewrites them, never the session.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import InvalidInput, LoadError
from edgeinfer.types import TensorSpec

LORA_SPEC = "lora.json"
INDEX_INPUT = "adapter_index"
MODES = ("per_run", "stacked")


def per_run_names(target: str) -> tuple[str, str]:
    return f"{target}.lora_A", f"{target}.lora_B"


def stacked_names(target: str) -> tuple[str, str]:
    return f"{target}.lora_A_stack", f"{target}.lora_B_stack"


@dataclass(frozen=True)
class LoraSpec:
    mode: str
    rank: int  # stacked: the rank every adapter is padded to; per_run: informational
    targets: dict[str, tuple[int, int]]  # weight initializer -> (in, out)

    @classmethod
    def read(cls, version_dir: Path) -> LoraSpec | None:
        path = version_dir / LORA_SPEC
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            spec = cls(
                str(doc["mode"]),
                int(doc["rank"]),
                {str(k): (int(v[0]), int(v[1])) for k, v in doc["targets"].items()},
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise LoadError(f"{path}: malformed LoRA spec: {e}") from e
        if spec.mode not in MODES or spec.rank < 1 or not spec.targets:
            raise LoadError(f"{path}: mode must be one of {MODES}, rank >= 1, targets non-empty")
        return spec

    def write(self, version_dir: Path) -> None:
        doc = {
            "mode": self.mode,
            "rank": self.rank,
            "targets": {k: list(v) for k, v in self.targets.items()},
        }
        (version_dir / LORA_SPEC).write_text(json.dumps(doc, indent=2, sort_keys=True))


def matmul_targets(model: Any) -> dict[str, tuple[int, int]]:
    """Weight initializers used as the B operand of a 2-D MatMul: the LoRA-able layers."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(inits.get(node.input[1], ())) == 2:
            d = inits[node.input[1]]
            out[node.input[1]] = (int(d[0]), int(d[1]))
    return out


def add_lora(model: Any, targets: list[str], mode: str, rank: int) -> tuple[Any, LoraSpec]:
    """Rewrite `model` (an onnx.ModelProto, changed in place) so each target MatMul adds a
    LoRA delta. Raises InvalidInput naming unknown targets."""
    from onnx import TensorProto, helper, numpy_helper

    if mode not in MODES:
        raise InvalidInput(f"LoRA mode must be one of {MODES}, got {mode!r}")
    available = matmul_targets(model)
    missing = [t for t in targets if t not in available]
    if missing or not targets:
        raise InvalidInput(
            f"LoRA targets {missing or targets} are not MatMul weights of this "
            f"model; available: {sorted(available)}"
        )
    g = model.graph
    f32 = TensorProto.FLOAT
    if mode == "stacked":
        g.input.append(helper.make_tensor_value_info(INDEX_INPUT, TensorProto.INT64, ["batch"]))
    new_nodes = []
    for node in g.node:
        w = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w not in targets:
            new_nodes.append(node)
            continue
        d_in, d_out = available[w]
        x, y = node.input[0], node.output[0]
        node.output[0] = f"{w}/base"
        new_nodes.append(node)
        p = f"{w}/lora"
        if mode == "per_run":
            a, b = per_run_names(w)
            g.input.append(helper.make_tensor_value_info(a, f32, [d_in, f"{w}_rank"]))
            g.input.append(helper.make_tensor_value_info(b, f32, [f"{w}_rank", d_out]))
            g.initializer.append(numpy_helper.from_array(np.zeros((d_in, 1), np.float32), a))
            g.initializer.append(numpy_helper.from_array(np.zeros((1, d_out), np.float32), b))
            new_nodes += [
                helper.make_node("MatMul", [x, a], [p + "/xa"]),
                helper.make_node("MatMul", [p + "/xa", b], [p + "/delta"]),
            ]
        else:
            a, b = stacked_names(w)
            g.input.append(helper.make_tensor_value_info(a, f32, ["n_adapters", d_in, rank]))
            g.input.append(helper.make_tensor_value_info(b, f32, ["n_adapters", rank, d_out]))
            axes = p + "/axes"
            g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
            new_nodes += [  # rows [b, in] -> [b, 1, in] @ [b, in, R] @ [b, R, out] -> [b, out]
                helper.make_node("Gather", [a, INDEX_INPUT], [p + "/a"], axis=0),
                helper.make_node("Gather", [b, INDEX_INPUT], [p + "/b"], axis=0),
                helper.make_node("Unsqueeze", [x, axes], [p + "/x3"]),
                helper.make_node("MatMul", [p + "/x3", p + "/a"], [p + "/xa"]),
                helper.make_node("MatMul", [p + "/xa", p + "/b"], [p + "/d3"]),
                helper.make_node("Squeeze", [p + "/d3", axes], [p + "/delta"]),
            ]
        new_nodes.append(helper.make_node("Add", [f"{w}/base", p + "/delta"], [y]))
    del g.node[:]
    g.node.extend(new_nodes)
    return model, LoraSpec(mode, rank, {t: available[t] for t in targets})


class StackedTable:
    """The stacked A/B tensors of one model: slot 0 is the base model (zeros); other slots hold
    resident adapters. Slots are stable while an adapter is resident, so rows queued with an
    index keep meaning the same adapter; a slot is reused only after its adapter was removed
    (the adapter layer removes it once no request holds it). Arrays are replaced, never
    written in place while runs may read them (copy on write), so a run sees one snapshot."""

    def __init__(self, spec: LoraSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}
        self.arrays: dict[str, np.ndarray] = {}
        for t, (d_in, d_out) in spec.targets.items():
            a, b = stacked_names(t)
            self.arrays[a] = np.zeros((1, d_in, spec.rank), np.float32)
            self.arrays[b] = np.zeros((1, spec.rank, d_out), np.float32)
        self.rebuilds = 0

    def slot(self, key: str) -> int | None:
        return self._slots.get(key)

    @property
    def slot_bytes(self) -> int:
        """What one resident adapter takes here: a slot padded to the graph's full rank."""
        return sum(v[0].nbytes for v in self.arrays.values())  # slot 0 always exists

    @property
    def keys(self) -> list[str]:
        return list(self._slots)

    def add(self, key: str, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
        """Put an adapter (target -> (A [in, r], B [r, out] with the scale folded in)) in a
        free slot; returns the slot."""
        for t, (a, _b) in weights.items():
            if t not in self.spec.targets:
                raise InvalidInput(
                    f"adapter targets '{t}', which this model's LoRA graph does "
                    f"not have; targets: {sorted(self.spec.targets)}"
                )
            if a.shape[1] > self.spec.rank:
                raise InvalidInput(
                    f"adapter rank {a.shape[1]} exceeds the stacked graph's rank "
                    f"{self.spec.rank}; convert the base with a larger --rank"
                )
        with self._lock:
            if key in self._slots:
                return self._slots[key]
            used = set(self._slots.values())
            n = next(iter(self.arrays.values())).shape[0]
            slot = next((i for i in range(1, n) if i not in used), n)
            new = {}
            for t in self.spec.targets:
                an, bn = stacked_names(t)
                a_arr, b_arr = self.arrays[an], self.arrays[bn]
                if slot == n:  # grow by one slot
                    a_arr = np.concatenate([a_arr, np.zeros_like(a_arr[:1])])
                    b_arr = np.concatenate([b_arr, np.zeros_like(b_arr[:1])])
                else:
                    a_arr, b_arr = a_arr.copy(), b_arr.copy()
                a_arr[slot] = 0.0
                b_arr[slot] = 0.0
                if t in weights:
                    a, b = weights[t]
                    a_arr[slot, :, : a.shape[1]] = a
                    b_arr[slot, : b.shape[0], :] = b
                new[an], new[bn] = a_arr, b_arr
            self.arrays = new  # one reference assignment: runs see old or new, never half
            self._slots[key] = slot
            self.rebuilds += 1
            return slot

    def remove(self, key: str) -> None:
        """Free an adapter's slot; trailing free slots are dropped so memory goes back."""
        with self._lock:
            if self._slots.pop(key, None) is None:
                return
            keep = max(self._slots.values(), default=0) + 1
            self.arrays = {k: v[:keep].copy() for k, v in self.arrays.items()}
            self.rebuilds += 1

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.arrays.values())


_tables: weakref.WeakValueDictionary[str, StackedTable] = weakref.WeakValueDictionary()
_tables_lock = threading.Lock()


def _shared_table(path: Path, spec: LoraSpec) -> StackedTable:
    """The one table of every instance of a model version (instance_count > 1): the adapter
    layer puts an adapter in a slot through one instance and the scheduler may run the rows on
    any, so every instance must read the same slots. It lives while an instance does."""
    with _tables_lock:
        table = _tables.get(str(path))
        if table is None or table.spec != spec:
            table = _tables[str(path)] = StackedTable(spec)
        return table


class LoraOnnxModel:
    """An OnnxModel whose graph was rewritten by `add_lora`: the LoRA inputs are hidden from
    clients; `run` takes the adapter (per_run) or fills the stacks and row indices (stacked)."""

    def __init__(self, inner: Any, spec: LoraSpec) -> None:
        self.inner = inner
        self.spec = spec
        self.platform = inner.platform
        hidden = {INDEX_INPUT}
        for t in spec.targets:
            hidden |= set(per_run_names(t)) | set(stacked_names(t))
        self.inputs: tuple[TensorSpec, ...] = tuple(s for s in inner.inputs if s.name not in hidden)
        self.outputs: tuple[TensorSpec, ...] = inner.outputs
        self.table = _shared_table(Path(inner.path), spec) if spec.mode == "stacked" else None

    @property
    def path(self) -> Path:
        return Path(self.inner.path)

    def run(
        self,
        feeds: dict[str, np.ndarray],
        output_names: list[str] | None = None,
        adapter: Any = None,
    ) -> dict[str, np.ndarray]:
        """`adapter`: an `ort.LoraAdapter` (per_run mode) or None for the base model. In stacked
        mode `feeds` may carry `adapter_index` (one slot per row; absent: the base model)."""
        if self.table is not None:
            feeds = dict(feeds)
            if INDEX_INPUT not in feeds:
                rows = next(iter(feeds.values())).shape[0]
                feeds[INDEX_INPUT] = np.zeros(rows, np.int64)
            feeds.update(self.table.arrays)
            return self.inner.run(feeds, output_names)
        if adapter is None:
            return self.inner.run(feeds, output_names)
        import onnxruntime as ort

        ro = ort.RunOptions()
        ro.add_active_adapter(adapter)
        return self.inner.run(feeds, output_names, run_options=ro)

    def example_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = self.inner.example_feeds(batch)
        names = {s.name for s in self.inputs}
        return {k: v for k, v in feeds.items() if k in names}

    def warmup(self) -> None:
        self.run(self.example_feeds())

    def close(self) -> None:
        self.inner.close()


def export_onnx_adapter(path: Path, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write an ORT `.onnx_adapter` of per_run parameters (target -> (A, B·scale))."""
    import onnxruntime as ort

    params = {}
    for t, (a, b) in weights.items():
        an, bn = per_run_names(t)
        params[an] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a, np.float32))
        params[bn] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(b, np.float32))
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(path))
    return path


def read_onnx_adapter(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """target -> (A, B) from an `.onnx_adapter` (for stacked models)."""
    import onnxruntime as ort

    # The OrtValues (and their .numpy() views) point into memory the AdapterFormat owns: keep it
    # alive until each array is copied out, or the arrays read freed memory (another adapter's
    # weights once it is reused).
    fmt = ort.AdapterFormat.read_adapter(str(path))
    params = {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}
    del fmt
    out = {}
    for name, a in params.items():
        if name.endswith(".lora_A"):
            t = name[: -len(".lora_A")]
            b = params.get(t + ".lora_B")
            if b is None:
                raise LoadError(f"{path}: '{name}' has no matching '{t}.lora_B'")
            out[t] = (a, b)
    if not out:
        raise LoadError(f"{path}: no '<target>.lora_A' / '.lora_B' parameters")
    return out


def load_ort_adapter(path: Path) -> Any:
    import onnxruntime as ort

    ad = ort.LoraAdapter()
    try:
        ad.Load(str(path))
    except Exception as e:  # ORT raises several unrelated exception types
        raise LoadError(f"{path}: ONNX Runtime could not load the adapter: {e}") from e
    return ad
