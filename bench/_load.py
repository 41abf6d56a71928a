"""The closed-loop HTTP load generator (src/edgeinfer/tune/load.py), taken from this checkout's
src/ whatever PYTHONPATH says: a paired run against another checkout (bench/source_ab.py) serves
that checkout's code but keeps this client. Stdlib only, so loading it by path is safe.
`import _load` gives that module itself (with PATH, its file, for running it as a process)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "src" / "edgeinfer" / "tune" / "load.py"
_spec = importlib.util.spec_from_file_location("_load", PATH)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
sys.modules["_load"] = _module  # dataclasses look their module up here; importers get it
_spec.loader.exec_module(_module)
_module.PATH = PATH  # type: ignore[attr-defined]
