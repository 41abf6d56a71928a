"""Encoded images (JPEG, PNG, WebP) as model inputs, decoded in the server with Pillow.

A model with an `[image]` table in its config takes its image input as a BYTES tensor of encoded
images, one per row (raw tensors of the model's own type and shape are still accepted). Each
image becomes one sample as the `[preprocess]` table says; `edgeinfer quantize` reads image
folders through the same `Preprocess`, so calibration data is exactly what serving sees:

    [preprocess]
    size = [224, 224]      # H, W of the model input (default: from its shape)
    resize = 256           # shorter side scaled to this, then the centre cropped to `size`;
                           # 0 (default): scaled straight to `size`
    interpolation = "bicubic"    # nearest | bilinear | bicubic | lanczos
    scale = 1.0            # x * scale, then (x - mean) / std per channel (default 1/255, 0, 1)
    mean = [127.0, 127.0, 127.0]
    std = [128.0, 128.0, 128.0]
    layout = "NCHW"        # or "NHWC" (default: from the model's input shape)

The pixel count is read from the header and checked before any pixel is decoded, so a small
file that claims a huge image (a decompression bomb) costs nothing. A JPEG at least twice the
size the model needs is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's draft
mode, libjpeg-turbo's scaled IDCT): a 12-megapixel photo then decodes several times faster.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import ConfigError, ImageOptions
from edgeinfer.errors import InvalidInput, LoadError
from edgeinfer.types import DTYPE_TO_NUMPY, TensorSpec

FORMATS = ("JPEG", "PNG", "WEBP")  # decoders reachable from a request; no others (EPS, ...)
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


class ImageError(ValueError):
    """One image could not become a sample; the message says why."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one sample: colour mode, resize/crop, normalization, layout."""

    height: int
    width: int
    channels: int  # 1 (grey) or 3 (RGB)
    layout: str = "NCHW"
    resize: int = 0  # shorter side before the centre crop; 0: straight to height x width
    interpolation: str = "bicubic"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "FP32"

    @classmethod
    def from_table(cls, table: dict[str, Any] | None, spec: TensorSpec) -> Preprocess:
        """The `[preprocess]` table for a model input `spec` (4-D); ConfigError says what to fix."""
        prep = dict(table or {})
        unknown = set(prep) - {"size", "resize", "interpolation", "scale", "mean", "std", "layout"}
        if unknown:
            raise ConfigError(f"[preprocess] has unknown keys {sorted(unknown)}")
        shape = spec.shape
        if len(shape) != 4:
            raise ConfigError(
                f"input '{spec.name}' has shape {list(shape)}; an image input is 4-D (NCHW or NHWC)"
            )
        layout = prep.get("layout") or (
            "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
        )
        if layout not in ("NCHW", "NHWC"):
            raise ConfigError("[preprocess] layout must be 'NCHW' or 'NHWC'")
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], *shape[1:3])
        size = prep.get("size", [h, w])
        if (
            c not in (1, 3)
            or not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(d, int) and d > 0 for d in size)
        ):
            raise ConfigError(
                f"cannot tell the image size/channels of input '{spec.name}' "
                f"{list(shape)}; set [preprocess] size = [H, W] and layout"
            )
        resize = prep.get("resize", 0)
        if not isinstance(resize, int) or resize < 0 or (resize and resize < max(size)):
            raise ConfigError(
                "[preprocess] resize (the shorter side before the centre crop) "
                "must be 0 or at least the larger of size = [H, W]"
            )
        interpolation = prep.get("interpolation", "bicubic")
        if interpolation not in _INTERPOLATIONS:
            raise ConfigError(f"[preprocess] interpolation must be one of {_INTERPOLATIONS}")
        mean, std = _per_channel(prep.get("mean", 0.0), c), _per_channel(prep.get("std", 1.0), c)
        if any(s == 0 for s in std):
            raise ConfigError("[preprocess] std must not be 0")
        if spec.datatype not in DTYPE_TO_NUMPY or spec.datatype == "BYTES":
            raise ConfigError(f"input '{spec.name}' of type {spec.datatype} cannot take images")
        return cls(
            size[0],
            size[1],
            c,
            layout,
            resize,
            interpolation,
            float(prep.get("scale", 1 / 255)),
            mean,
            std,
            spec.datatype,
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, h, w = self.channels, self.height, self.width
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    def region(self, width: int, height: int) -> tuple[tuple[int, int], tuple[float, ...]]:
        """(size the image is scaled to before cropping, crop box in source pixels)."""
        if not self.resize:
            return (self.width, self.height), (0.0, 0.0, float(width), float(height))
        s = self.resize / min(width, height)
        cw, ch = self.width / s, self.height / s  # the crop, in source pixels
        left, top = (width - cw) / 2, (height - ch) / 2
        scaled = (max(self.width, round(width * s)), max(self.height, round(height * s)))
        return scaled, (left, top, left + cw, top + ch)

    def sample(self, img: Any) -> np.ndarray:
        """A decoded PIL image -> one sample in the model's layout and type."""
        from PIL import Image

        mode = "L" if self.channels == 1 else "RGB"
        if img.mode == "P":  # palette transparency: through RGBA, as Pillow recommends
            img = img.convert("RGBA")
        if img.mode != mode:
            img = img.convert(mode)
        box = self.region(*img.size)[1]
        resample = getattr(Image.Resampling, self.interpolation.upper())
        img = img.resize((self.width, self.height), resample, box=box)
        x = np.asarray(img, np.uint8).reshape(self.height, self.width, self.channels)
        out_dtype = DTYPE_TO_NUMPY[self.dtype]
        y: np.ndarray = x  # integer inputs (quantized models) take the pixels as they are
        if out_dtype.kind in "fc":
            std = np.asarray(self.std, np.float32)
            y = x.astype(np.float32)
            y *= np.float32(self.scale) / std
            y -= np.asarray(self.mean, np.float32) / std
        if self.layout == "NCHW":
            y = y.transpose(2, 0, 1)
        return np.ascontiguousarray(y, dtype=out_dtype)

    def load_file(self, path: Path, max_pixels: int = 0, draft: bool = True) -> np.ndarray:
        """An image file -> one sample (for calibration and evaluation data)."""
        try:
            with path.open("rb") as f:
                return decode(f.read(), self, max_pixels, draft)
        except OSError as e:
            raise ImageError(f"cannot read the file: {e}") from e


def _per_channel(value: Any, channels: int) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, channels) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise ConfigError(f"[preprocess] mean and std must be a number or {channels} numbers")
    return tuple(float(v) for v in values) * (channels if len(values) == 1 else 1)


def decode(data: bytes, prep: Preprocess, max_pixels: int = 0, draft: bool = True) -> np.ndarray:
    """Encoded image bytes -> one sample. ImageError says what is wrong with the image."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a decompression bomb: {e}") from None
    except Exception as e:  # Pillow's header parsers raise many types for corrupt files
        raise ImageError(f"not a readable image (truncated or corrupt): {e}") from None
    with img:
        w, h = img.size
        if max_pixels and w * h > max_pixels:
            raise ImageError(
                f"{w}x{h} is {w * h} pixels, above the limit of {max_pixels} "
                "([image] max_pixels): refused before decoding as a possible "
                "decompression bomb"
            )
        if draft and img.format == "JPEG":
            scaled = prep.region(w, h)[0]
            img.draft(None if prep.channels == 3 else "L", scaled)
        try:
            img.load()
        except Exception as e:
            raise ImageError(
                f"cannot decode the {img.format} image (truncated or corrupt): {e}"
            ) from None
        try:
            return prep.sample(img)
        except ValueError as e:  # conversions Pillow does not have (e.g. from LAB)
            raise ImageError(
                f"cannot convert mode {img.mode} to {'RGB' if prep.channels == 3 else 'L'}: {e}"
            ) from None


class ImageDecoder:
    """Decodes the BYTES rows of one model input into that input's tensor."""

    def __init__(self, name: str, prep: Preprocess, options: ImageOptions) -> None:
        self.name = name
        self.prep = prep
        self.options = options

    def decode_one(self, index: int, data: Any) -> np.ndarray:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput(f"input '{self.name}' element {index}: not encoded image bytes")
        try:
            return decode(bytes(data), self.prep, self.options.max_pixels, self.options.draft)
        except ImageError as e:
            raise InvalidInput(f"input '{self.name}' element {index}: {e}") from None

    def decode_batch(self, rows: np.ndarray) -> np.ndarray:
        samples = [self.decode_one(i, v) for i, v in enumerate(rows.reshape(-1))]
        return np.stack(samples) if samples else self.empty()

    def empty(self) -> np.ndarray:
        return np.zeros((0, *self.prep.sample_shape), DTYPE_TO_NUMPY[self.prep.dtype])


class ImageModel:
    """A tensor model whose image input also takes encoded images (BYTES, one per row)."""

    def __init__(
        self,
        inner: Any,
        version_dir: Path,
        options: ImageOptions,
        preprocess: dict[str, Any] | None,
    ) -> None:
        images = [s for s in inner.inputs if len(s.shape) == 4]
        name = options.input or (images[0].name if len(images) == 1 else "")
        spec = next((s for s in inner.inputs if s.name == name), None)
        if spec is None:
            raise LoadError(
                f"{version_dir}: [image] input {name or '(unset)'!r} is not one of "
                f"the model's inputs {[s.name for s in inner.inputs]}; set "
                "[image] input to the 4-D image input"
            )
        try:
            prep = Preprocess.from_table(preprocess, spec)
        except ConfigError as e:
            raise LoadError(f"{version_dir}: {e}") from e
        self._inner = inner
        self.decoder = ImageDecoder(name, prep, options)
        self.platform = inner.platform
        self.tensor_inputs: tuple[TensorSpec, ...] = inner.inputs
        self.inputs = tuple(
            TensorSpec(name, "BYTES", (s.shape[0],)) if s.name == name else s for s in inner.inputs
        )
        self.outputs = inner.outputs

    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        rows = feeds.get(self.decoder.name)
        if rows is not None and rows.dtype == object:  # not decoded before queueing
            feeds = {**feeds, self.decoder.name: self.decoder.decode_batch(rows)}
        return dict(self._inner.run(feeds, output_names))

    def warmup(self) -> None:
        self._inner.warmup()

    def close(self) -> None:
        self._inner.close()
