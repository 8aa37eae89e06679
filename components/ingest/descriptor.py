"""The crop- and scale-robust near-duplicate descriptor (dedupe=near, near_duplicate_method=dct) and its search.

Each image keeps the low-frequency DCT coefficients (K x K of a 64x64 grayscale thumbnail) of its centre crops at
CROP_SCALES (1.0 = the whole image, 0.6 = 20 % cut off each side). Before comparing, every coefficient is
whitened by the data set's own mean and spread (so the look that all photos of one set share, e.g. a fish pass's
background, does not count as similarity), then vectors are compared by cosine similarity. Image i is a
near-duplicate of image j when one of i's 8 flips/90° rotations matches j's whole image, or i's whole image
matches one of j's centre crops (i is a re-crop of j), at a cosine >= the threshold.

The search: up to EXACT_MAX images an exact blocked matrix product (memory O(block x n), time O(n²) in BLAS);
above, an inverted-file index (IVF, as in FAISS, here in numpy): a spherical k-means of the whole-image vectors
into cells of ~CELL images, each query vector (the 8 flips of a whole image, and each centre crop) scans only
the PROBES cells whose centres are nearest to it, and every candidate is scored exactly as above. A pair is
missed only when its two vectors fall in cells that far apart: bench/near_duplicates.py measures that at 100 000
images (planted copies of real frames), and the time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

SIDE = 64  # thumbnail side
K = 11  # K x K low-frequency coefficients per crop (the DC term is dropped)
CROP_SCALES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
BLOCK_FLOATS = 2**24  # similarity entries computed at once (64 MB of float32)
EXACT_MAX = 20_000  # images searched exactly (O(n²): ~3 min at 20 000 on 2 cores); above, the IVF index
CELL = 64  # mean images per cell of the index
PROBES = 24  # cells each query vector scans
TRAIN_PER_CELL = 32  # k-means sample: this many images per cell
QUERY_FLOATS = 2**24  # query-to-centre similarities computed at once

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


def descriptor_pairs(descriptors: Sequence[bytes], threshold: float,
                     exact_max: int = EXACT_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of near-duplicates (module docstring) and their cosine similarity; exact up to
    `exact_max` images, by the IVF index above."""
    n = len(descriptors)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    coeffs = np.frombuffer(b"".join(descriptors), dtype=np.float16).reshape(n, len(CROP_SCALES), K, K)
    vectors = _whitened(coeffs.astype(np.float32))
    whole = vectors[:, 0]
    flips = _flips(whole)
    crops = vectors[:, 1:]
    found, scores = (_exact if n <= exact_max else _indexed)(whole, flips, crops, threshold)
    pairs, score = np.concatenate(found), np.concatenate(scores)
    keep = pairs[:, 0] != pairs[:, 1]
    pairs, score = pairs[keep], score[keep]
    order = np.lexsort((-score, pairs[:, 1], pairs[:, 0]))  # per pair, the best of (i, j) and (j, i) first
    pairs, score = pairs[order], score[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = np.any(pairs[1:] != pairs[:-1], axis=1)
    return pairs[first], score[first]


def _exact(whole: np.ndarray, flips: np.ndarray, crops: np.ndarray, threshold: float):
    """Every pair, in blocks of rows: ([pairs (i, j), i <= j], [scores]) of those >= threshold."""
    n = len(whole)
    crops = crops.reshape(-1, K * K)
    block = max(1, BLOCK_FLOATS // (8 * n))
    found, scores = [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        best = (flips[start:stop].reshape(-1, K * K) @ whole.T).reshape(stop - start, 8, n).max(axis=1)
        best = np.maximum(best, (whole[start:stop] @ crops.T).reshape(stop - start, n, -1).max(axis=2))
        i, j = np.nonzero(best >= threshold)
        scores.append(best[i, j])
        i += start
        found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
    return found, scores


def _kmeans(x: np.ndarray, cells: int, rng: np.random.Generator, iterations: int = 8) -> np.ndarray:
    """Spherical k-means (unit centres, by cosine) of a sample of the rows of `x`."""
    sample = x[rng.choice(len(x), min(len(x), TRAIN_PER_CELL * cells), replace=False)]
    centres = sample[rng.choice(len(sample), cells, replace=False)]
    for _ in range(iterations):
        nearest = np.concatenate([(sample[i:i + 8192] @ centres.T).argmax(axis=1)
                                  for i in range(0, len(sample), 8192)])
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, sample)
        empty = np.linalg.norm(sums, axis=1) < 1e-6
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]  # reseed empty cells
        centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    return centres.astype(np.float32)


def _indexed(whole: np.ndarray, flips: np.ndarray, crops: np.ndarray, threshold: float):
    """The IVF search (module docstring): ([pairs (i, j), i <= j], [scores]) of the candidates >= threshold."""
    n = len(whole)
    rng = np.random.default_rng(0)  # the index, hence the result, is the same on every run
    centres = _kmeans(whole, max(1, n // CELL), rng)
    cells = len(centres)
    home = np.concatenate([(whole[i:i + 8192] @ centres.T).argmax(axis=1) for i in range(0, n, 8192)])
    order = np.argsort(home, kind="stable")
    bounds = np.searchsorted(home[order], np.arange(cells + 1))
    members = [order[bounds[c]:bounds[c + 1]] for c in range(cells)]
    found, scores = [], []
    chunk = max(1, QUERY_FLOATS // cells)
    # query vectors: image i's 8 flips (match j's whole image) and j's crops (j's crop matches i's whole image)
    for queries in (flips, crops):
        per_image = queries.shape[1]
        queries = queries.reshape(-1, K * K)
        for start in range(0, len(queries), chunk):
            _scan(queries[start:start + chunk], start, per_image, centres, members, whole, threshold, found, scores)
    return found or [np.empty((0, 2), dtype=np.int64)], scores or [np.empty(0, dtype=np.float32)]


def _scan(q: np.ndarray, start: int, per_image: int, centres: np.ndarray, members: list[np.ndarray],
          whole: np.ndarray, threshold: float, found: list, scores: list) -> None:
    """Score query vectors `q` (rows start.. of an image-major array) against the images of their nearest cells."""
    cells = len(centres)
    probes = min(PROBES, cells)
    near = np.argpartition(-(q @ centres.T), probes - 1, axis=1)[:, :probes]
    cell_of = near.ravel()
    query_of = np.repeat(np.arange(len(q)), probes)
    by_cell = np.argsort(cell_of, kind="stable")
    cell_bounds = np.searchsorted(cell_of[by_cell], np.arange(cells + 1))
    for c in range(cells):
        rows = query_of[by_cell[cell_bounds[c]:cell_bounds[c + 1]]]
        if not len(rows) or not len(members[c]):
            continue
        sim = q[rows] @ whole[members[c]].T
        a, b = np.nonzero(sim >= threshold)
        if len(a):
            i, j = (start + rows[a]) // per_image, members[c][b]
            found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
            scores.append(sim[a, b])
