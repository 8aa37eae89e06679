"""Decode/convert/resize of single images (no Spark): every mode ends as RGB of the right size and content."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tlpipe.components.common import images
from tlpipe.components.preprocess.params import RESIZE_MODES, PreprocessParams


def process(data: bytes, size: int) -> bytes:
    """images.process with preprocess's defaults (resize_mode, jpeg_quality)."""
    return images.process(data, size, PreprocessParams.resize_mode, PreprocessParams.jpeg_quality)


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _decoded(jpeg: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    return np.asarray(img, dtype=np.int16)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = np.full((30, 40), 128 * 257, dtype=np.uint16)  # mid grey in 16 bits
    out = _decoded(process(_encoded(Image.fromarray(grey), "PNG"), 16))
    assert out.shape == (16, 16, 3)
    assert abs(out.mean() - 128) < 3  # a naive convert("RGB") clips this to 255


def test_alpha_is_flattened_on_white_and_cmyk_keeps_colour():
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert _decoded(process(_encoded(transparent, "PNG"), 8)).min() > 245
    red_cmyk = Image.new("RGB", (32, 32), (220, 20, 20)).convert("CMYK")
    pixel = _decoded(process(_encoded(red_cmyk, "JPEG", quality=95), 16))[8, 8]
    assert pixel[0] > 180 and pixel[1] < 70 and pixel[2] < 70


def test_palette_greyscale_and_gif_first_frame():
    frames = [Image.new("P", (24, 24), color) for color in (10, 200)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    out = _decoded(process(gif.getvalue(), 12))
    first = np.asarray(frames[0].convert("RGB"), dtype=np.int16)[0, 0]
    assert np.abs(out[6, 6] - first).max() < 12
    assert _decoded(process(_encoded(Image.new("L", (9, 30), 77), "PNG"), 10)).shape == (10, 10, 3)


def test_exif_orientation_is_applied():
    upright = Image.new("RGB", (60, 20), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    img = images.load_rgb(_encoded(stored, "JPEG", quality=95, exif=exif))
    assert img.size == (60, 20)
    assert img.getpixel((5, 10))[0] > 200 and img.getpixel((55, 10))[2] > 200


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_resize_modes(mode):
    wide = Image.new("RGB", (80, 40), (0, 200, 0))
    wide.paste((200, 0, 0), (0, 0, 20, 40))  # red left quarter
    out = np.asarray(images.resize(wide, 32, mode))
    assert out.shape == (32, 32, 3)
    left = out[16, 1]
    if mode == "squash":  # the whole image, stretched: the left quarter is red
        assert left[0] > 150
    elif mode == "center-crop":  # the centre square: no red
        assert left[1] > 150
    else:  # letterboxed: black bands above and below
        assert out[2, 16].max() < 10 and out[16, 16][1] > 150


def test_preprocess_offers_the_resize_modes_the_implementation_knows():
    assert RESIZE_MODES == images.RESIZE_MODES


def test_to_array_is_the_decoded_example_record():
    """What the served model sees equals what training reads from preprocess's record, pixel for pixel."""
    from tlpipe.components.common import examples

    noisy = np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)  # where decoders differ
    data = _encoded(Image.fromarray(noisy), "PNG")
    array = images.to_array(data, 24, "pad", 95)
    record = examples.encode_example(images.process(data, 24, "pad", 95), 0, b"sha")
    trained_on = examples.parse_example(record)[0].numpy()
    assert array.dtype == np.uint8 and array.shape == (24, 24, 3)
    assert np.array_equal(array, trained_on)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        images.resize(Image.new("RGB", (4, 4)), 4, "stretch")
    truncated = _encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200]
    with pytest.raises(OSError):
        process(truncated, 16)
