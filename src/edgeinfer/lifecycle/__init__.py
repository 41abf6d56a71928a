"""Loading, verifying, swapping and unloading model versions; the Engine facade handlers call."""

from edgeinfer.lifecycle.engine import Engine

__all__ = ["Engine"]
