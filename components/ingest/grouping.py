"""Split groups: images that must land in one split (same bytes, near-duplicate pictures, one named source).

Near-duplicates are found without comparing all pairs: by the pigeonhole principle two 64-bit hashes
within Hamming distance d agree exactly on at least one of d+1 disjoint bit bands, so each band is a
bucket index (multi-index hashing) and only hashes sharing a bucket are compared, vectorised in numpy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

MAX_PAIRS_PER_BATCH = 4_000_000  # candidate pairs compared at once (bounds memory: ~100 MB)


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def union_all(self, members: Iterable[int]) -> None:
        first = None
        for m in members:
            if first is None:
                first = m
            else:
                self.union(first, m)

    def components(self) -> list[int]:
        """The root of every element."""
        return [self.find(i) for i in range(len(self.parent))]


def _bands(distance: int) -> list[tuple[int, int]]:
    """(shift, mask) of distance+1 disjoint bands covering the 64 bits."""
    count = min(distance + 1, 64)
    edges = np.linspace(0, 64, count + 1).round().astype(int)
    return [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def near_duplicate_pairs(canonical: Sequence[int], variants: Sequence[Sequence[int]], distance: int) -> np.ndarray:
    """Pairs (i, j), i < j, where some flip/rotation variant of image i is within `distance` bits of image j.

    `canonical[j]` is image j's invariant hash; `variants[i]` its 8 dihedral hashes. Cost grows with the number
    of hashes sharing a band value, not with n².
    """
    n = len(canonical)
    if n < 2 or distance < 0:
        return np.empty((0, 2), dtype=np.int64)
    canon = np.asarray(canonical, dtype=np.uint64)
    var = np.asarray(variants, dtype=np.uint64).reshape(n, -1)
    query_hash = var.ravel()
    query_img = np.repeat(np.arange(n), var.shape[1])
    found = []
    for shift, mask in _bands(distance):
        keys = (canon >> np.uint64(shift)) & np.uint64(mask)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        qkeys = (query_hash >> np.uint64(shift)) & np.uint64(mask)
        lo = np.searchsorted(sorted_keys, qkeys, side="left")
        hi = np.searchsorted(sorted_keys, qkeys, side="right")
        cum = np.concatenate([[0], np.cumsum(hi - lo)])
        start = 0
        while start < len(qkeys):  # batches of at most MAX_PAIRS_PER_BATCH candidate pairs (at least one query)
            end = max(int(np.searchsorted(cum, cum[start] + MAX_PAIRS_PER_BATCH, side="right")) - 1, start + 1)
            c = hi[start:end] - lo[start:end]
            total = int(c.sum())
            if total:
                q = np.repeat(np.arange(start, end), c)
                offsets = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
                j = order[np.repeat(lo[start:end], c) + offsets]
                i = query_img[q]
                close = (np.bitwise_count(query_hash[q] ^ canon[j]) <= distance) & (i != j)
                if close.any():
                    i, j = i[close], j[close]
                    found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
            start = end
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0)


def pattern_ids(keys: Sequence[str], pattern: str) -> list[str | None]:
    """The first capture group of `pattern` searched in each key (None where it does not match)."""
    regex = compile_group_pattern(pattern)
    out = []
    for key in keys:
        m = regex.search(key)
        out.append(m.group(1) if m and m.group(1) else None)
    return out


def compile_group_pattern(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"group_pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if regex.groups < 1:
        raise ValueError(f"group_pattern {pattern!r} needs a capture group: its first group is the group id")
    return regex
