"""LoRA adapters: per-request selection, load/unload at run time, tenant grants, a byte budget."""

from edgeinfer.adapters.manager import AdapterManager, Lease
from edgeinfer.adapters.store import AdapterSpec, add_adapter, scan

__all__ = ["AdapterManager", "AdapterSpec", "Lease", "add_adapter", "scan"]
