"""Automatic mixed precision: which quantized nodes hurt accuracy most, measured end to end.

Local error at a node is a poor guide (measured on MiniLM: the node whose exclusion helps most
has one of the smallest local errors; an early layer's error is amplified downstream). So each
node is judged by the model's own output: one "switch" model holds, for every quantized node,
both its quantized form and its FP32 form behind `Where(keep_fp32_k, fp32, quantized)`, with the
selectors as boolean inputs. Any set of nodes can then be kept in FP32 by feeding True for
them: one session, no re-quantization per trial. The winning set is then quantized for real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SELECTOR = "__edgeinfer_keep_fp32_{}"


def quantized_nodes(fp32: Any, quantized: Any) -> list[Any]:
    """FP32 nodes (named, with a constant weight) whose output `quantized` still produces, but
    from another op (integer kernels, DequantizeLinear) or from other inputs (QDQ)."""
    consts = {i.name for i in fp32.graph.initializer}
    consts |= {o for n in fp32.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    out = []
    for n in fp32.graph.node:
        if len(n.output) != 1 or not n.name or not any(i in consts for i in n.input):
            continue
        p = producer.get(n.output[0])
        if p is not None and (p.op_type != n.op_type or list(p.input) != list(n.input)):
            out.append(n)
    return out


def ensure_names(src: Path, workdir: Path) -> Path:
    """`src`, or a copy whose unnamed nodes got names: ORT's `nodes_to_exclude` and the
    sensitivity report identify nodes by name."""
    import onnx

    model = onnx.load(str(src))
    if all(n.name for n in model.graph.node):
        return src
    taken = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)
    named = workdir / "named.onnx"
    onnx.save(model, str(named))
    return named


def switch_model(fp32: Any, quantized: Any, nodes: list[Any]) -> Any:
    """`quantized` with an FP32 twin of each of `nodes`, chosen by boolean inputs."""
    from onnx import TensorProto, helper

    model = type(quantized)()
    model.CopyFrom(quantized)
    graph = model.graph
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    fp32_consts = {o: n for n in fp32.graph.node if n.op_type == "Constant" for o in n.output}
    have = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    have |= {i.name for i in graph.input}
    producer_index = {o: k for k, n in enumerate(graph.node) for o in n.output}
    after: dict[int, list[Any]] = {}
    for k, node in enumerate(nodes):
        y = node.output[0]
        p = producer_index[y]
        outputs = graph.node[p].output
        outputs[list(outputs).index(y)] = f"{y}__q{k}"
        twin = helper.make_node(
            node.op_type,
            list(node.input),
            [f"{y}__f{k}"],
            name=f"{node.name}__fp32",
            domain=node.domain,
        )
        twin.attribute.extend(node.attribute)
        extra = []
        for name in node.input:
            if name and name not in have:
                if name in fp32_inits:
                    graph.initializer.append(fp32_inits[name])
                elif name in fp32_consts:
                    extra.append(fp32_consts[name])
                have.add(name)
        sel = SELECTOR.format(k)
        graph.input.append(helper.make_tensor_value_info(sel, TensorProto.BOOL, []))
        where = helper.make_node(
            "Where", [sel, twin.output[0], f"{y}__q{k}"], [y], name=f"{node.name}__switch"
        )
        after.setdefault(p, []).extend([*extra, twin, where])
    ordered = []
    for k, n in enumerate(graph.node):
        ordered.append(n)
        ordered.extend(after.get(k, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return model


@dataclass
class Ranked:
    name: str
    op_type: str
    score: float  # how much keeping only this node in FP32 lowers the ranking proxy


Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def selectors(n: int, keep: set[int]) -> dict[str, np.ndarray]:
    return {SELECTOR.format(k): np.array(k in keep) for k in range(n)}


def run_switched(
    session: Any, batches: Callable[[], Iterator[dict[str, np.ndarray]]], n: int, keep: set[int]
) -> np.ndarray:
    """First output of the switch model over all `batches()` with `keep` in FP32."""
    sel = selectors(n, keep)
    name = session.get_outputs()[0].name
    return np.concatenate([session.run([name], {**feeds, **sel})[0] for feeds in batches()])


def rank(
    session: Any,
    nodes: list[Any],
    batches: Callable[[], Iterator[dict[str, np.ndarray]]],
    proxy: Callable[[np.ndarray], float],
) -> list[Ranked]:
    """Leave-one-out: for each node, the proxy's improvement when only it stays FP32."""
    base = proxy(run_switched(session, batches, len(nodes), set()))
    ranked = [
        Ranked(
            node.name, node.op_type, base - proxy(run_switched(session, batches, len(nodes), {k}))
        )
        for k, node in enumerate(nodes)
    ]
    ranked.sort(key=lambda r: -r.score)
    return ranked
