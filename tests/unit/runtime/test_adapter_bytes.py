"""What a resident adapter is charged against the byte budget."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgeinfer.adapters.manager import _resident_bytes
from edgeinfer.adapters.store import AdapterSpec
from edgeinfer.runtime.lora_onnx import LoraSpec, StackedTable


def test_a_stacked_slot_padded_to_the_graph_rank_is_what_counts(tmp_path: Path) -> None:
    file = tmp_path / "a.onnx_adapter"
    file.write_bytes(b"\0" * 1000)  # a rank-2 adapter's file: small
    spec = AdapterSpec("m", "a", file)
    table = StackedTable(LoraSpec("stacked", 8, {"w1": (16, 32), "w2": (32, 4)}))
    slot = 4 * 8 * (16 + 32) + 4 * 8 * (32 + 4)  # float32 A [in, 8] and B [8, out] per target
    assert table.slot_bytes == slot
    assert _resident_bytes(spec, SimpleNamespace(table=table)) == slot
    assert _resident_bytes(spec, SimpleNamespace(table=None)) == 1000  # per-run: the file
    # The table really grows by that much when an adapter is added.
    before = sum(a.nbytes for a in table.arrays.values())
    table.add("m:adapter:a", {"w1": (np.ones((16, 2), np.float32), np.ones((2, 32), np.float32))})
    assert sum(a.nbytes for a in table.arrays.values()) - before == slot
