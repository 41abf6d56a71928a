"""The closed-loop HTTP load generator (src/edgeinfer/tune/load.py), taken from this checkout's
src/ whatever PYTHONPATH says: a paired run against another checkout (bench/source_ab.py) serves
that checkout's code but keeps this client. Stdlib only, so loading it by path is safe."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "src" / "edgeinfer" / "tune" / "load.py"
_spec = importlib.util.spec_from_file_location("_edgeinfer_load", PATH)
assert _spec is not None and _spec.loader is not None
_load = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _load  # dataclasses look their module up here
_spec.loader.exec_module(_load)

machine_busy_s = _load.machine_busy_s
proc_cpu_s = _load.proc_cpu_s
self_cpu_s = _load.self_cpu_s
