"""One image as training sees it: decode, EXIF orientation, RGB, resize to a square, JPEG.

The one implementation of that preparation: preprocess makes the `examples` with it, and the served model
(components/register/serving.py) prepares every request image with it, with the `image_size`, `resize_mode`
and `jpeg_quality` recorded in the examples' schema.json.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("squash", "center-crop", "pad")  # the same as preprocess's params.py (a test compares them)
PAD_COLOR = (0, 0, 0)
_RESAMPLE = Image.Resampling.BICUBIC


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite a transparent image over white (transparent pixels are usually background)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16/32-bit grey is scaled (not clipped), alpha is flattened onto white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img, dtype=np.uint32 if img.mode.startswith("I;16") else np.int64)
        peak = 65535 if img.mode.startswith("I;16") or wide.max(initial=0) > 255 else 255
        grey = np.clip(wide * 255 // peak, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, F


def load_rgb(data: bytes, target: int | None = None) -> Image.Image:
    """Decode `data` (first frame of an animation), rotate by its EXIF orientation, convert to RGB.

    With `target`, a JPEG is decoded at the smallest DCT scale that still covers target×target (faster).
    """
    img = Image.open(io.BytesIO(data))
    if target and img.format == "JPEG":
        img.draft(None, (target, target))
    img.seek(0)
    img.load()  # decode now: truncated or corrupt data raises here
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def resize(img: Image.Image, size: int, resize_mode: str) -> Image.Image:
    """Make `img` size×size: stretch (`squash`), crop the centre square (`center-crop`) or letterbox (`pad`)."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if resize_mode == "squash":
        return img.resize((size, size), _RESAMPLE, reducing_gap=3.0)
    if resize_mode == "center-crop":
        return ImageOps.fit(img, (size, size), _RESAMPLE)
    return ImageOps.pad(img, (size, size), _RESAMPLE, color=PAD_COLOR)


def process(data: bytes, size: int, resize_mode: str, quality: int) -> bytes:
    """Encoded image bytes -> JPEG bytes of an RGB size×size image (what an `examples` record holds)."""
    img = resize(load_rgb(data, size), size, resize_mode)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def to_array(data: bytes, size: int, resize_mode: str, quality: int) -> np.ndarray:
    """Encoded image bytes -> the uint8 [size, size, 3] array training reads: `process`, then decoded as
    `examples.decode_jpeg` decodes an example (needs TensorFlow)."""
    from tlpipe.components.common.examples import decode_jpeg

    return decode_jpeg(process(data, size, resize_mode, quality)).numpy()
