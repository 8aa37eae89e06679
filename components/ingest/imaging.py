"""Checking one object's bytes: decode with Pillow, measure, hash (sha256 + flip/rotation-invariant dHash)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow format name -> format recorded in the manifest (MPO is the multi-picture JPEG some cameras write).
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "GIF": "GIF", "WEBP": "WEBP"}
HASH_SIDE = 8  # dHash of an 8x8 grid of horizontal gradients = 64 bits


class RejectedObject(ValueError):
    """The object cannot be used as a training image; `reason` is a short code, the message says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    format: str
    width: int
    height: int
    phash: int  # canonical (smallest) of the 8 dihedral variants
    phash_variants: tuple[int, ...]  # dHash of the image under each flip/90° rotation


def inspect_image(data: bytes, max_image_pixels: int) -> ImageInfo:
    """Decode `data` fully (a truncated file fails here) and hash it, or raise RejectedObject."""
    if not data:
        raise RejectedObject("empty", "zero-byte object")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = ACCEPTED_FORMATS.get(img.format or "")
            if fmt is None:
                raise RejectedObject("unsupported_format", f"{img.format} image; accepted: JPEG, PNG, BMP, GIF, WebP")
            width, height = img.size
            if width * height > max_image_pixels:
                raise RejectedObject("too_large", f"{width}x{height} = {width * height:,} pixels exceeds "
                                                  f"max_image_pixels={max_image_pixels:,}")
            if fmt == "JPEG":
                img.draft("L", (4 * HASH_SIDE, 4 * HASH_SIDE))  # decode at 1/2..1/8 scale: same check, faster
            img.load()  # GIF: first frame
            variants = dhash_variants(img)
    except RejectedObject:
        raise
    except UnidentifiedImageError:
        raise RejectedObject("not_an_image", "Pillow cannot identify it as an image") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise RejectedObject("corrupt", f"cannot be decoded: {exc}") from None
    return ImageInfo(sha256, fmt, width, height, min(variants), variants)


def _thumbnail(img: Image.Image) -> np.ndarray:
    """A (HASH_SIDE+1)² grayscale float thumbnail, rounded so that flipping it stays exact."""
    gray = img.convert("L").convert("F").resize((HASH_SIDE + 1, HASH_SIDE + 1), Image.Resampling.BOX)
    return np.round(np.asarray(gray, dtype=np.float64), 2)


def _dhash(grid: np.ndarray) -> int:
    bits = (grid[:HASH_SIDE, 1:] > grid[:HASH_SIDE, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def dhash_variants(img: Image.Image) -> tuple[int, ...]:
    """64-bit difference hashes of `img` under the 8 flips/90° rotations (identity first).

    The thumbnail is taken once and transformed, so a flipped or rotated copy of an image has the same
    set of variants, hence the same canonical hash `min(variants)`.
    """
    thumb = _thumbnail(img)
    out = []
    for grid in (thumb, thumb.T):
        for k in range(4):
            out.append(_dhash(np.rot90(grid, k)))
    return tuple(out)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
