"""Calibration and evaluation data, streamed batch by batch so memory stays bounded.

Three sources, all yielding feeds for the ONNX model's own inputs:
- `.npz`: one array per model input, first axis = samples; an optional `labels` array (ints).
  Arrays are read row by row from the archive (stored or deflated), never whole.
- a folder of PNG/JPEG/WebP images: decoded, resized and normalized per the model config's
  `[preprocess]` table exactly as the server does for an `[image]` input
  (`runtime/images.py`); images in sub-folders take the sub-folder's index in sorted order as
  their label.
- `.txt`: one sentence per line (`#` comments and blank lines skipped) for `[text]` models,
  tokenized exactly as the server does (same tokenizer file, truncation and padding).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeinfer.config import ConfigError
from edgeinfer.errors import LoadError
from edgeinfer.optimize.source import ModelSource, OptimizeError
from edgeinfer.runtime.images import ImageError, Preprocess
from edgeinfer.runtime.text import encode, load_tokenizer
from edgeinfer.types import DTYPE_TO_NUMPY, TensorSpec

LABELS = "labels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Dataset:
    """Samples for one model: `len()` of them, in `batches()`; `labels()` when known."""

    path: Path
    fixed_batch: int | None = None  # the model's first axis is fixed (e.g. 1)

    def __len__(self) -> int:
        raise NotImplementedError

    def labels(self) -> np.ndarray | None:
        return None

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of up to `batch_size` samples each (the model's fixed batch if it has one),
        at most `limit` samples in all."""
        size = self.fixed_batch or batch_size
        left = len(self) if limit is None else min(limit, len(self))
        for feeds in self._batches(size):
            if left <= 0:
                return
            n = len(next(iter(feeds.values())))
            if n > left:
                feeds = {k: v[:left] for k, v in feeds.items()}
                n = left
            left -= n
            yield feeds


def open_dataset(path: Path, inputs: tuple[TensorSpec, ...], source: ModelSource) -> Dataset:
    """Open `path` for a model with `inputs`; any mismatch is an OptimizeError naming it."""
    if path.is_dir():
        return ImageFolder(path, inputs, source.preprocess)
    if not path.is_file():
        raise OptimizeError(f"{path}: no such file or directory")
    if path.suffix == ".npz":
        return NpzDataset(path, inputs)
    if path.suffix == ".txt":
        return TextLines(path, inputs, source)
    raise OptimizeError(f"{path}: unsupported data; give an .npz, a .txt or a folder of images")


def _fixed_batch(inputs: tuple[TensorSpec, ...]) -> int | None:
    firsts = {s.shape[0] for s in inputs if s.shape}
    return next(iter(firsts)) if len(firsts) == 1 and min(firsts) > 0 else None


# ---- .npz -----------------------------------------------------------------------------------
class _NpyRows:
    """Rows of one `.npy` member of a zip, read sequentially without loading the array."""

    def __init__(self, zf: zipfile.ZipFile, member: str, where: str) -> None:
        fmt = np.lib.format
        self._f: IO[bytes] = zf.open(member)
        version = fmt.read_magic(self._f)
        readers: dict[tuple[int, int], Callable[..., Any]] = {
            (1, 0): fmt.read_array_header_1_0,
            (2, 0): fmt.read_array_header_2_0,
        }
        if version not in readers:
            raise OptimizeError(f"{where}: unsupported .npy version {version}")
        shape, fortran, dtype = readers[version](self._f)
        if dtype.hasobject:
            raise OptimizeError(f"{where}: object arrays are not supported (save plain arrays)")
        if fortran and len(shape) > 1:
            raise OptimizeError(f"{where}: Fortran-ordered arrays are not supported")
        if not shape:
            raise OptimizeError(f"{where}: a scalar; expected samples along the first axis")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype[Any] = dtype
        self._row = dtype.itemsize * math.prod(shape[1:])

    def read(self, n: int) -> np.ndarray:
        raw = self._f.read(n * self._row)
        rows = len(raw) // self._row if self._row else n
        return np.frombuffer(raw, self.dtype, rows * math.prod(self.shape[1:])).reshape(
            rows, *self.shape[1:]
        )

    def close(self) -> None:
        self._f.close()


class NpzDataset(Dataset):
    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...]) -> None:
        self.path = path
        self.fixed_batch = _fixed_batch(inputs)
        self._specs = {s.name: s for s in inputs}
        try:
            with zipfile.ZipFile(path) as zf:
                members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
                shapes = {}
                for name, member in members.items():
                    rows = _NpyRows(zf, member, f"{path}: array '{name}'")
                    shapes[name] = (rows.shape, rows.dtype)
                    rows.close()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise OptimizeError(f"{path}: not a readable .npz ({e})") from e
        self._members = members
        self._n = self._validate(shapes)

    def _validate(self, shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> int:
        where = str(self.path)
        missing = sorted(set(self._specs) - set(shapes))
        unknown = sorted(set(shapes) - set(self._specs) - {LABELS})
        if missing or unknown:
            raise OptimizeError(
                f"{where}: arrays {sorted(shapes)} do not match the model inputs "
                f"{sorted(self._specs)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {unknown})" if unknown else "")
            )
        counts = {name: shape[0] for name, (shape, _) in shapes.items()}
        if len(set(counts.values())) > 1:
            raise OptimizeError(f"{where}: arrays hold different numbers of samples: {counts}")
        for name, spec in self._specs.items():
            shape, dtype = shapes[name]
            check_array(where, spec, shape, dtype)
        if LABELS in shapes:
            shape, dtype = shapes[LABELS]
            if len(shape) != 1 or dtype.kind not in "iu":
                raise OptimizeError(
                    f"{where}: 'labels' must be a 1-D integer array, got {dtype} {list(shape)}"
                )
        n = next(iter(counts.values()))
        if n == 0:
            raise OptimizeError(f"{where}: empty dataset (0 samples)")
        return n

    def __len__(self) -> int:
        return self._n

    def labels(self) -> np.ndarray | None:
        if LABELS not in self._members:
            return None
        with np.load(self.path, allow_pickle=False) as f:
            return np.asarray(f[LABELS], dtype=np.int64)

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        with zipfile.ZipFile(self.path) as zf:
            streams = {name: _NpyRows(zf, self._members[name], name) for name in self._specs}
            try:
                for _ in range(0, self._n, batch_size):
                    yield {
                        name: cast(s.read(batch_size), self._specs[name])
                        for name, s in streams.items()
                    }
            finally:
                for s in streams.values():
                    s.close()


def check_array(where: str, spec: TensorSpec, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    """Samples along axis 0; every fixed model dimension after it must match."""
    want = DTYPE_TO_NUMPY.get(spec.datatype)
    if want is None or want.kind not in "fiub":
        raise OptimizeError(
            f"{where}: input '{spec.name}' of type {spec.datatype} is not supported"
        )
    compatible = dtype.kind == want.kind or (dtype.kind in "iu" and want.kind in "iu")
    if not compatible:
        raise OptimizeError(
            f"{where}: '{spec.name}' holds {dtype}, the model takes {spec.datatype}"
        )
    model_dims = list(spec.shape)
    if len(shape) != len(model_dims) or any(
        d >= 0 and d != s for d, s in zip(model_dims[1:], shape[1:], strict=True)
    ):
        shown = ["N" if i == 0 else (d if d >= 0 else "?") for i, d in enumerate(model_dims)]
        raise OptimizeError(
            f"{where}: '{spec.name}' has shape {list(shape)}, the model takes {shown} "
            "(samples along the first axis)"
        )


def cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=DTYPE_TO_NUMPY[spec.datatype])


# ---- images ---------------------------------------------------------------------------------
class ImageFolder(Dataset):
    def __init__(
        self, path: Path, inputs: tuple[TensorSpec, ...], preprocess: dict[str, Any]
    ) -> None:
        self.path = path
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise OptimizeError(
                f"{path}: an image folder feeds one 4-D image input; the model takes "
                f"{[(s.name, list(s.shape)) for s in inputs]}"
            )
        self.spec = inputs[0]
        self.fixed_batch = _fixed_batch(inputs)
        classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes:
            files = [(f, i) for i, d in enumerate(classes) for f in _images(d)]
        else:
            files = [(f, -1) for f in _images(path)]
        if not files:
            raise OptimizeError(f"{path}: empty dataset (no {'/'.join(IMAGE_SUFFIXES)} files)")
        self._files = [f for f, _ in files]
        self._labels = np.array([c for _, c in files], np.int64) if classes else None
        self._prep = _image_prep(path, self.spec, preprocess)

    def __len__(self) -> int:
        return len(self._files)

    def labels(self) -> np.ndarray | None:
        return self._labels

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self._files), batch_size):
            images = [_load_image(self._prep, f) for f in self._files[i : i + batch_size]]
            yield {self.spec.name: cast(np.stack(images), self.spec)}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_prep(where: Path, spec: TensorSpec, table: dict[str, Any]) -> Preprocess:
    try:
        return Preprocess.from_table(table, spec)
    except ConfigError as e:
        raise OptimizeError(f"{where}: {e}") from e


def _load_image(prep: Preprocess, file: Path) -> np.ndarray:
    try:
        return prep.load_file(file)
    except ImageError as e:
        raise OptimizeError(f"{file}: cannot read the image: {e}") from e


# ---- text -----------------------------------------------------------------------------------
class TextLines(Dataset):
    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], source: ModelSource) -> None:
        self.path = path
        names = {s.name for s in inputs}
        text = source.config.text
        if text is None or source.version_dir is None:
            raise OptimizeError(
                f"{path}: a .txt dataset needs a repository version of a [text] model "
                "(its tokenizer); give REPO/MODEL/N, or the token arrays as an .npz"
            )
        if not {"input_ids", "attention_mask"} <= names or not names <= set(TOKEN_INPUTS):
            raise OptimizeError(f"{path}: the model inputs {sorted(names)} are not token ids")
        try:  # the server's own tokenizer set-up, so calibration matches serving
            self._tok = load_tokenizer(source.version_dir / text.tokenizer, text.max_length)
        except LoadError as e:
            raise OptimizeError(e.message) from e
        self._names = [n for n in TOKEN_INPUTS if n in names]
        try:
            self._n = sum(1 for _ in self.sentences())
        except UnicodeDecodeError as e:
            raise OptimizeError(f"{path}: not UTF-8 text: {e}") from e
        if self._n == 0:
            raise OptimizeError(f"{path}: empty dataset (no sentences)")

    def sentences(self) -> Iterator[str]:
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                s = line.strip()
                if s and not s.startswith("#"):
                    yield s

    def __len__(self) -> int:
        return self._n

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return encode(self._tok, texts, self._names)

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        chunk: list[str] = []
        for s in self.sentences():
            chunk.append(s)
            if len(chunk) == batch_size:
                yield self.tokenize(chunk)
                chunk = []
        if chunk:
            yield self.tokenize(chunk)
