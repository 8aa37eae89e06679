"""The crop- and scale-robust near-duplicate descriptor (dedupe=near, near_duplicate_method=dct) and its search.

Each image keeps the low-frequency DCT coefficients (K x K of a 64x64 grayscale thumbnail) of its centre crops at
CROP_SCALES (1.0 = the whole image, 0.6 = 20 % cut off each side). Before comparing, every coefficient is
whitened by the data set's own mean and spread (so the look that all photos of one set share, e.g. a fish pass's
background, does not count as similarity), then vectors are compared by cosine similarity. Image i is a
near-duplicate of image j when one of i's 8 flips/90° rotations matches j's whole image, or i's whole image
matches one of j's centre crops (i is a re-crop of j), at a cosine >= the threshold.

The search is an exact blocked matrix product: memory O(block x n), time O(n²) but in BLAS (bench/near_duplicates.py
gives the time at 100 000 images).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

SIDE = 64  # thumbnail side
K = 11  # K x K low-frequency coefficients per crop (the DC term is dropped)
CROP_SCALES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
BLOCK_FLOATS = 2**24  # similarity entries computed at once (64 MB of float32)

_k = np.arange(SIDE)
_DCT = np.sqrt(2 / SIDE) * np.cos(np.pi * (2 * _k[None, :] + 1) * _k[:, None] / (2 * SIDE))
_DCT[0] /= np.sqrt(2)
_DCT = _DCT[:K]  # rows of the orthonormal DCT-II matrix kept: coefficients = D @ image @ D.T
_ODD = (-1.0) ** np.arange(K)
_EVEN_EVEN = np.outer(_ODD > 0, _ODD > 0)  # coefficients that no flip changes the sign of


def crop_descriptor(img: Image.Image) -> bytes:
    """The K x K DCT coefficients of `img`'s centre crops at CROP_SCALES, as float16 bytes (S * K * K * 2)."""
    gray = img.convert("L")
    width, height = gray.size
    blocks = []
    for s in CROP_SCALES:
        dx, dy = width * (1 - s) / 2, height * (1 - s) / 2
        thumb = gray.resize((SIDE, SIDE), Image.Resampling.BOX, box=(dx, dy, width - dx, height - dy))
        blocks.append(_DCT @ np.asarray(thumb, dtype=np.float64) @ _DCT.T)
    return np.stack(blocks).astype(np.float16).tobytes()


def _whitened(coeffs: np.ndarray) -> np.ndarray:
    """(n, S, K, K) -> unit vectors (n, S, K*K) after the data set's flip/rotation-symmetric whitening."""
    flat = coeffs.reshape(-1, K, K)
    mean = np.where(_EVEN_EVEN, flat.mean(axis=0, dtype=np.float64), 0.0)  # a flip turns odd coefficients' mean to its negative
    mean = (mean + mean.T) / 2
    square = np.square(flat, dtype=np.float64).mean(axis=0)
    spread = np.sqrt(np.maximum((square + square.T) / 2 - mean**2, 0)) + 1e-6
    white = (coeffs - mean.astype(np.float32)) / spread.astype(np.float32)
    white[..., 0, 0] = 0  # brightness is no evidence
    vectors = white.reshape(*coeffs.shape[:2], K * K)
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-9)).astype(np.float32)


def _flips(vectors: np.ndarray) -> np.ndarray:
    """(n, K*K) whole-image vectors -> (n, 8, K*K): under the 8 flips/90° rotations (sign flips, transposes)."""
    c = vectors.reshape(-1, K, K)
    signs = [np.outer(r, col) for r in (np.ones(K), _ODD) for col in (np.ones(K), _ODD)]
    out = [c * m for m in signs] + [c.transpose(0, 2, 1) * m for m in signs]
    return np.stack(out, axis=1).reshape(len(c), 8, K * K).astype(np.float32)


def descriptor_pairs(descriptors: Sequence[bytes], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of near-duplicates (module docstring) and their cosine similarity."""
    n = len(descriptors)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    coeffs = np.frombuffer(b"".join(descriptors), dtype=np.float16).reshape(n, len(CROP_SCALES), K, K)
    vectors = _whitened(coeffs.astype(np.float32))
    whole = vectors[:, 0]
    crops = vectors[:, 1:].reshape(-1, K * K)
    flips = _flips(whole)
    block = max(1, BLOCK_FLOATS // (8 * n))
    found, scores = [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        best = (flips[start:stop].reshape(-1, K * K) @ whole.T).reshape(stop - start, 8, n).max(axis=1)
        best = np.maximum(best, (whole[start:stop] @ crops.T).reshape(stop - start, n, -1).max(axis=2))
        i, j = np.nonzero(best >= threshold)
        i += start
        keep = i != j
        found.append(np.stack([np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])], axis=1))
        scores.append(best[i[keep] - start, j[keep]])
    pairs, score = np.concatenate(found), np.concatenate(scores)
    order = np.lexsort((-score, pairs[:, 1], pairs[:, 0]))  # per pair, the best of (i, j) and (j, i) first
    pairs, score = pairs[order], score[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = np.any(pairs[1:] != pairs[:-1], axis=1)
    return pairs[first], score[first]
