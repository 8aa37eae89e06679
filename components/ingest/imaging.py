"""Checking one object's bytes: decode with Pillow, measure, hash (sha256 + flip/rotation-invariant perceptual hash)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from tlpipe.components.ingest.descriptor import SIDE, crop_descriptor

# Pillow format name -> format recorded in the manifest (MPO is the multi-picture JPEG some cameras write).
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "GIF": "GIF", "WEBP": "WEBP"}
HASH_SIDE = 8  # 8x8 DCT coefficients = 64 bits
THUMB = 32  # of a 32x32 grayscale thumbnail


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
    descriptor: bytes  # descriptor.crop_descriptor: DCT coefficients of the centre crops (near_duplicate_method=dct)


def inspect_image(data: bytes, max_image_pixels: int,
                  reserve: Callable[[int], AbstractContextManager] = lambda _: nullcontext()) -> ImageInfo:
    """Decode `data` fully (a truncated file fails here) and hash it, or raise RejectedObject.

    Decoding and hashing run inside `reserve(decode_bytes(img))` (the reader's memory budget).
    """
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
                img.draft("L", (2 * SIDE, 2 * SIDE))  # decode at 1/2..1/8 scale, >= 2x the descriptor thumbnail
            with reserve(decode_bytes(img)):
                img.load()  # GIF: first frame
                source = _hash_source(img)
                variants = phash_variants(source)
                descriptor = crop_descriptor(source)
                img.close()  # frees the pixels before the reservation ends
    except RejectedObject:
        raise
    except UnidentifiedImageError:
        raise RejectedObject("not_an_image", "Pillow cannot identify it as an image") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise RejectedObject("corrupt", f"cannot be decoded: {exc}") from None
    return ImageInfo(sha256, fmt, width, height, min(variants), variants, descriptor)


# --- memory bound (issue 16; the reader's MemoryBudget holds decode_bytes while an image is decoded) ---
# An image with a short side of 2*REDUCED_SIDE or more is hashed from a box-reduced copy (short side >= REDUCED_SIDE):
# the hash's full-size grayscale and float copies would cost 5 more bytes per pixel (a 9400x9400 PNG: 0.8 GB -> 0.35
# GB). The hash moves by 0-4 bits of 64 (upscaled fish frames); JPEG's `draft` already decodes at a reduced scale.
REDUCED_SIDE = 512
DECODER_BYTES_PER_PIXEL = {"WEBP": 12}  # full-size buffers a decoder holds besides the image (libwebp's frame, copies)


def _via_grayscale(mode: str) -> bool:
    """Modes reduced through grayscale (the hash's first step anyway): `reduce` refuses them or copies them whole."""
    return mode in ("1", "P", "LA", "PA", "RGBA") or mode.startswith("I;16")


def _hash_source(img: Image.Image) -> Image.Image:
    factor = min(img.size) // REDUCED_SIDE
    if factor < 2:
        return img
    return (img.convert("L") if _via_grayscale(img.mode) else img).reduce(factor)


def decode_bytes(img: Image.Image) -> int:
    """Upper bound of the bytes that loading and hashing `img` (opened, `draft` applied, not loaded) allocate."""
    width, height = img.size
    pixel = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4  # Pillow's storage
    decoded = width * height * (pixel + DECODER_BYTES_PER_PIXEL.get(img.format or "", 0))
    factor = min(img.size) // REDUCED_SIDE
    if factor < 2:
        return decoded + width * height * 5  # + the hash's grayscale and float copies
    hashed = (width // factor + 1) * (height // factor + 1)
    return decoded + width * height * _via_grayscale(img.mode) + hashed * (pixel + 5)


_k = np.arange(THUMB)
_DCT = np.sqrt(2 / THUMB) * np.cos(np.pi * (2 * _k[None, :] + 1) * _k[:, None] / (2 * THUMB))
_DCT[0] /= np.sqrt(2)  # orthonormal DCT-II matrix: coefficients = D @ image @ D.T
_ODD = (-1.0) ** np.arange(HASH_SIDE)  # mirroring an axis flips the sign of its odd frequencies
# Sign patterns of the 4 mirror combinations (none, rows, columns, both), applied to the coefficients and their
# transpose: the 8 flips/90° rotations.
_MIRRORS = np.stack([np.outer(r, c) for r in (np.ones(HASH_SIDE), _ODD) for c in (np.ones(HASH_SIDE), _ODD)])


def phash_variants(img: Image.Image) -> tuple[int, ...]:
    """64-bit DCT perceptual hashes of `img` under the 8 flips/90° rotations (identity first).

    Flips and rotations of the image only transpose its DCT coefficients or flip the sign of odd frequencies, so
    the variants are computed from one thumbnail: a flipped or rotated copy of an image has the same set of
    variants (up to rounding), and `min(variants)` is an orientation-invariant hash. A bit is set where the
    coefficient exceeds the median of the 63 non-DC coefficients.
    """
    gray = img.convert("L").convert("F").resize((THUMB, THUMB), Image.Resampling.BOX)
    c = (_DCT @ np.asarray(gray, dtype=np.float64) @ _DCT.T)[:HASH_SIDE, :HASH_SIDE]
    variants = np.concatenate([c * _MIRRORS, c.T * _MIRRORS]).reshape(8, -1)
    bits = variants > np.median(variants[:, 1:], axis=1, keepdims=True)
    return tuple(int(h) for h in np.packbits(bits, axis=1).view(">u8").ravel())


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
