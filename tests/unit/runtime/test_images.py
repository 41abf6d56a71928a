"""Encoded images become model samples as `[preprocess]` says; bad images are refused with why."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeinfer.config import ConfigError, ImageOptions, ModelConfig
from edgeinfer.errors import InvalidInput, LoadError
from edgeinfer.runtime import load
from edgeinfer.runtime.images import ImageDecoder, ImageError, Preprocess, decode
from edgeinfer.testing import models
from edgeinfer.types import TensorSpec

NCHW = TensorSpec("image", "FP32", (-1, 3, 8, 8))


def encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.zeros((h, w, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    x[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    x[..., 2] = 200
    return Image.fromarray(x)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels and holds almost none of them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + body + b"\x00\x00\x00\x00IDAT\x35\xaf\x06\x1e"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_every_format_decodes_to_the_model_layout_and_normalization(fmt: str) -> None:
    prep = Preprocess.from_table({"scale": 1.0, "mean": [0, 0, 100], "std": [255, 1, 2]}, NCHW)
    solid = Image.new("RGB", (40, 30), (255, 0, 200))
    x = decode(encoded(solid, fmt, quality=100) if fmt != "PNG" else encoded(solid, fmt), prep)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0, atol=0.02)  # 255 / 255
    np.testing.assert_allclose(x[1], 0.0, atol=3)  # lossy formats bleed a little
    np.testing.assert_allclose(x[2], 50.0, atol=2)  # (200 - 100) / 2


def test_default_normalization_is_unit_range_and_nhwc_is_read_from_the_shape() -> None:
    prep = Preprocess.from_table({}, TensorSpec("x", "FP32", (-1, 5, 7, 3)))
    assert (prep.layout, prep.height, prep.width) == ("NHWC", 5, 7)
    x = decode(encoded(Image.new("RGB", (14, 10), (255, 255, 255)), "PNG"), prep)
    assert x.shape == (5, 7, 3)
    np.testing.assert_allclose(x, 1.0)


def test_resize_keeps_the_aspect_and_crops_the_centre() -> None:
    # Red, a wide green middle, blue: a centre crop of the shorter side sees only green; a
    # plain resize squeezes all three in.
    x = np.zeros((30, 90, 3), np.uint8)
    x[:, :20, 0] = x[:, 20:70, 1] = x[:, 70:, 2] = 255
    data = encoded(Image.fromarray(x), "PNG")
    crop = decode(data, Preprocess.from_table({"resize": 8, "scale": 1.0}, NCHW))
    squeeze = decode(data, Preprocess.from_table({"scale": 1.0}, NCHW))
    assert crop[1].min() > 250 and crop[0].max() < 5 and crop[2].max() < 5
    assert squeeze[0, :, 0].min() > 250 and squeeze[2, :, -1].min() > 250


def test_grey_and_palette_and_rgba_images_become_rgb() -> None:
    prep = Preprocess.from_table({"scale": 1.0}, NCHW)
    grey = decode(encoded(Image.new("L", (8, 8), 77), "PNG"), prep)
    np.testing.assert_allclose(grey, 77)
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 0
    np.testing.assert_allclose(decode(encoded(pal, "PNG"), prep)[:, 0, 0], [10, 20, 30])
    rgba = decode(encoded(Image.new("RGBA", (8, 8), (1, 2, 3, 0)), "PNG"), prep)
    np.testing.assert_allclose(rgba[:, 0, 0], [1, 2, 3])


def test_a_grey_model_gets_one_channel() -> None:
    prep = Preprocess.from_table({"scale": 1.0}, TensorSpec("x", "FP32", (-1, 1, 4, 4)))
    x = decode(encoded(Image.new("RGB", (8, 8), (255, 255, 255)), "JPEG"), prep)
    assert x.shape == (1, 4, 4) and x.min() > 250


def test_uint8_inputs_take_raw_pixels() -> None:
    prep = Preprocess.from_table({"scale": 1.0, "mean": 9}, TensorSpec("x", "UINT8", (-1, 8, 8, 3)))
    x = decode(encoded(Image.new("RGB", (8, 8), (3, 4, 5)), "PNG"), prep)
    assert x.dtype == np.uint8 and x[0, 0].tolist() == [3, 4, 5]


def test_draft_decodes_a_large_jpeg_smaller_with_nearly_the_same_sample() -> None:
    prep = Preprocess.from_table({"resize": 8}, NCHW)
    big = encoded(gradient(1600, 1200), "JPEG", quality=95)
    with Image.open(io.BytesIO(big)) as img:
        img.draft(None, prep.region(*img.size)[0])
        assert img.size == (200, 150)  # 1/8 scale in the DCT domain
    full, fast = decode(big, prep, draft=False), decode(big, prep, draft=True)
    assert np.abs(full - fast).max() < 0.05  # in 0..1 units


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"hello, not an image", "not an image in a supported format"),
        (encoded(gradient(), "BMP"), "not an image in a supported format"),
        (encoded(gradient(), "JPEG")[:300], "truncated or corrupt"),
        (encoded(gradient(320, 240), "JPEG")[:2000], "cannot decode the JPEG image"),
        (encoded(gradient(320, 240), "PNG")[:200], "cannot decode the PNG image"),
        (png_header(100_000, 100_000), "decompression bomb"),
        (png_header(3000, 3000), "above the limit of 1000000"),
    ],
)
def test_bad_images_are_refused_with_the_reason(data: bytes, why: str) -> None:
    prep = Preprocess.from_table({}, NCHW)
    with pytest.raises(ImageError, match=why):
        decode(data, prep, max_pixels=1_000_000)


def test_a_bomb_is_refused_from_its_header_before_any_pixel_is_decoded() -> None:
    data = png_header(8_000, 8_000)  # 64 MP claimed by a 60-byte file
    with pytest.raises(ImageError, match="refused before decoding as a possible decompression"):
        decode(data, Preprocess.from_table({}, NCHW), max_pixels=50_000_000)


def test_unconvertible_modes_are_refused() -> None:
    prep = Preprocess.from_table({}, NCHW)
    data = encoded(Image.new("I;16", (8, 8), 1000), "PNG")
    try:
        x = decode(data, prep)
    except ImageError as e:
        assert "cannot convert mode" in str(e)
    else:  # Pillow converts 16-bit grey: then it must be a valid sample
        assert x.shape == (3, 8, 8)


def test_decoder_errors_name_the_input_and_the_element() -> None:
    dec = ImageDecoder("image", Preprocess.from_table({}, NCHW), ImageOptions())
    rows = np.array([encoded(gradient(), "PNG"), b"garbage"], dtype=object)
    with pytest.raises(InvalidInput, match=r"input 'image' element 1: not an image"):
        dec.decode_batch(rows)
    assert dec.decode_batch(rows[:1]).shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"layout": "CHW"}, "layout"),
        ({"resize": 4}, "resize"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"std": [1, 0, 1]}, "std"),
        ({"mean": [1, 2]}, "mean and std"),
        ({"colour": "rgb"}, "unknown keys"),
    ],
)
def test_bad_preprocess_tables_say_what_to_fix(table: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Preprocess.from_table(table, NCHW)


def test_an_image_model_declares_a_bytes_input_and_runs_either_form(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    models.colours(version / "model.onnx", side=8)
    config = ModelConfig.from_dict({"image": {}, "preprocess": {"resize": 8}}, "m")
    model = load(version, config)
    try:
        assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("image", "BYTES", (-1,))]
        red = encoded(Image.new("RGB", (12, 8), (250, 10, 10)), "PNG")
        out = model.run({"image": np.array([red], dtype=object)})["scores"]
        assert out.shape == (1, 3) and int(out.argmax()) == 0
        raw = np.zeros((1, 3, 8, 8), np.float32)
        raw[:, 2] = 1.0
        assert int(model.run({"image": raw})["scores"].argmax()) == 2
    finally:
        model.close()


def test_an_image_input_must_exist(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    models.colours(version / "model.onnx", side=8)
    with pytest.raises(LoadError, match="not one of the model's inputs"):
        load(version, ModelConfig.from_dict({"image": {"input": "photo"}}, "m"))
