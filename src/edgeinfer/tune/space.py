"""The search space of `edgeinfer tune`: candidate serving configurations and why some are pruned.

A candidate is a backend, a precision and the serving settings the scheduler uses (intra-op
threads, instances, dynamic batching). Candidates the device cannot run well are never tried:
more threads than usable CPUs, threads x instances oversubscribing the CPUs, batching for a model
without a batch axis, a backend whose package is missing, instances that do not fit in memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from edgeinfer.runtime import BACKENDS

PRECISIONS = ("fp32", "int8-dynamic", "int8-static")
MAX_BATCH = 64  # refinement stays within these
MAX_DELAY_US = 16_000
# (max_batch_size, max_queue_delay_us) of the coarse pass; 0: no dynamic batching
BATCHING = ((0, 0), (8, 2000))


@dataclass(frozen=True, order=True)
class Candidate:
    backend: str = "onnxruntime"
    precision: str = "fp32"
    threads: int = 1  # intra-op threads of each instance
    instances: int = 1
    max_batch_size: int = 0  # 0: no dynamic batching (each request runs alone)
    max_queue_delay_us: int = 0

    @property
    def key(self) -> str:
        batching = (
            f"batch {self.max_batch_size}/{self.max_queue_delay_us}us"
            if self.max_batch_size
            else "no batching"
        )
        return (
            f"{self.backend} {self.precision} threads={self.threads} "
            f"instances={self.instances} {batching}"
        )

    def overrides(self, base_max_batch: int) -> dict[str, Any]:
        """Config keys (as in config.toml) that make a model serve this candidate."""
        out: dict[str, Any] = {
            "backend": self.backend,
            "instance_count": self.instances,
            self.backend: {"intra_op_threads": self.threads},  # [onnxruntime], [openvino]...
        }
        if self.max_batch_size:
            out["max_batch_size"] = self.max_batch_size
            out["dynamic_batching"] = {"max_queue_delay_us": self.max_queue_delay_us}
        else:
            out["max_batch_size"] = base_max_batch
            out["dynamic_batching"] = None  # None: remove the key from config.toml
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Pruned:
    candidate: Candidate
    reason: str


@dataclass(frozen=True)
class Device:
    usable_cpus: int
    memory_budget_bytes: int | None = None


@dataclass(frozen=True)
class ModelFacts:
    files: frozenset[str]  # file names in the version directory
    batch_axis: bool  # every input's first dimension is variable
    bytes_per_instance: int  # estimated resident bytes of one loaded instance
    quantizable: bool = True  # an ONNX graph with weights to quantize
    can_calibrate: bool = False  # calibration data was given (needed by int8-static)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`raw` (a parsed config.toml) with `overrides` merged in; a None value removes the key."""
    out = dict(raw)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_overrides(out[key], value)
        else:
            out[key] = value
    return out


def tensor_backends() -> list[str]:
    """Every backend of runtime.BACKENDS that serves tensor models (not the LLM loop)."""
    return [b.name for b in BACKENDS.values() if b.kind == "tensor"]


def thread_splits(cpus: int) -> list[tuple[int, int]]:
    """(threads, instances) pairs worth trying: powers of two and the CPU count, product <= cpus."""
    steps = sorted({1, cpus, *(2**k for k in range(8) if 2**k <= cpus)})
    return [(t, i) for t in steps for i in steps if t * i <= cpus]


def everything(
    device: Device,
    facts: ModelFacts,
    backends: list[str],
    precisions: list[str],
    batching: tuple[tuple[int, int], ...] = BATCHING,
) -> tuple[list[Candidate], list[Pruned]]:
    """The coarse space: every backend x precision x thread split x batching, split into the
    candidates the device can run and the pruned ones (with the reason)."""
    kept: list[Candidate] = []
    pruned: list[Pruned] = []
    for backend in backends:
        for precision in precisions:
            for threads, instances in thread_splits(max(1, device.usable_cpus)):
                for size, delay in batching:
                    c = Candidate(backend, precision, threads, instances, size, delay)
                    reason = why_pruned(c, device, facts)
                    (pruned.append(Pruned(c, reason)) if reason else kept.append(c))
    return kept, pruned


def engines(kept: list[Candidate], device: Device) -> list[Candidate]:
    """Stage 1: each backend x precision once, with every usable thread, one instance."""
    if not kept:
        return []
    full = [
        c
        for c in kept
        if c.instances == 1 and not c.max_batch_size and c.threads == max(k.threads for k in kept)
    ]
    return sorted(full, key=lambda c: (c.precision != "fp32", c.backend != "onnxruntime"))


def serving_grid(kept: list[Candidate], combos: list[tuple[str, str]]) -> list[Candidate]:
    """Stage 2: thread splits and batching for the best backend x precision combinations."""
    return [c for combo in combos for c in kept if (c.backend, c.precision) == combo]


def refine(best: Candidate, device: Device, facts: ModelFacts) -> list[Candidate]:
    """Neighbours of the best candidate: other batch sizes and queue delays around it."""
    if not best.max_batch_size:
        return []
    sizes = {max(2, best.max_batch_size // 2), min(MAX_BATCH, best.max_batch_size * 2)}
    delays = {
        max(250, best.max_queue_delay_us // 4),
        min(MAX_DELAY_US, best.max_queue_delay_us * 2),
    }
    out = [replace(best, max_batch_size=s) for s in sorted(sizes)]
    out += [replace(best, max_queue_delay_us=d) for d in sorted(delays)]
    return [c for c in out if c != best and not why_pruned(c, device, facts)]


def why_pruned(c: Candidate, device: Device, facts: ModelFacts) -> str:
    """Why the device should not run `c` ("" when it can)."""
    backend = BACKENDS.get(c.backend)
    if backend is None or backend.kind != "tensor":
        return f"this edgeinfer has no {c.backend} backend for tensor models"
    if not backend.installed():
        return f"{c.backend} is not installed (pip install 'edgeinfer[{backend.extra}]')"
    if not facts.files.intersection(backend.files):
        return f"{c.backend} needs one of {', '.join(backend.files)}"
    if c.threads > device.usable_cpus:
        return f"{c.threads} threads > {device.usable_cpus} usable CPUs"
    if c.threads * c.instances > device.usable_cpus:
        return (
            f"{c.threads} threads x {c.instances} instances oversubscribe {device.usable_cpus} CPUs"
        )
    if c.max_batch_size and not facts.batch_axis:
        return "the model has no batch axis (a fixed first dimension)"
    if c.precision != "fp32":
        if "model.onnx" not in facts.files or not facts.quantizable:
            return "INT8 is made from an ONNX model with weights (edgeinfer quantize)"
        if c.precision == "int8-static" and not facts.can_calibrate:
            return "int8-static needs calibration data (--eval or --calibration)"
    budget = device.memory_budget_bytes
    if budget and facts.bytes_per_instance * c.instances > budget:
        return (
            f"{c.instances} instances need ~{facts.bytes_per_instance * c.instances >> 20} MB, "
            f"over the {budget >> 20} MB memory budget"
        )
    return ""
