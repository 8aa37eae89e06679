"""Duplicates and split groups: images that must land in one split (same bytes, near-duplicate pictures, one
named source), and the rejection of copies.

Near-duplicates are found without comparing all pairs: by the pigeonhole principle two 64-bit hashes
within Hamming distance d agree exactly on at least one of d+1 disjoint bit bands, so each band is a
bucket index (multi-index hashing) and only hashes sharing a bucket are compared, vectorised in numpy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import get_logger
from tlpipe.components.ingest.descriptor import descriptor_pairs
from tlpipe.components.ingest.imaging import hamming
from tlpipe.components.ingest.params import (
    DEFAULT_NEAR_DUPLICATE_SIMILARITY,
    NEAR_DUPLICATE_METHODS,
    compile_group_pattern,
)
from tlpipe.components.ingest.reader import Listed
from tlpipe.components.ingest.report import IngestError

log = get_logger("ingest")

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


def _phash_merged(first: np.ndarray, inverse: np.ndarray, pairs: np.ndarray) -> list[tuple[int, int]]:
    """Image pairs joined by the phash search: same hash (to the first image holding it) and close hashes."""
    same = [(int(first[h]), i) for i, h in enumerate(inverse.tolist()) if int(first[h]) != i]
    return same + [(int(first[a]), int(first[b])) for a, b in pairs.tolist()]


def pattern_ids(keys: Sequence[str], pattern: str) -> list[str | None]:
    """The first capture group of `pattern` searched in each key (None where it does not match)."""
    regex = compile_group_pattern(pattern)
    out = []
    for key in keys:
        m = regex.search(key)
        out.append(m.group(1) if m and m.group(1) else None)
    return out


def reject_duplicates(listed: list[Listed], bucket: str, dedupe: str) -> None:
    """Same bytes under two classes: all copies rejected. Same bytes twice in one class: kept once (unless off)."""
    by_sha: dict[str, list[Listed]] = defaultdict(list)
    for item in listed:
        if not item.reason:
            by_sha[item.info.sha256].append(item)
    for sha, copies in by_sha.items():
        if len(copies) < 2:
            continue
        copies.sort(key=lambda x: x.key)
        labels = sorted({x.label for x in copies})
        if len(labels) > 1:
            keys = ", ".join(x.key for x in copies)
            for item in copies:
                item.reason = "conflicting_label"
                item.detail = f"same bytes (sha256 {sha[:12]}…) under classes {', '.join(labels)}: {keys}"
        elif dedupe != "off":
            for item in copies[1:]:
                item.reason = "duplicate"
                item.detail = f"same bytes as {s3lib.join_uri(bucket, copies[0].key)} (kept)"


def group_ids(accepted: list[Listed], dedupe: str, distance: int, group_pattern: str, *,
              method: str = NEAR_DUPLICATE_METHODS[1], similarity: float = DEFAULT_NEAR_DUPLICATE_SIMILARITY,
              merged: list[tuple[str, str, float]] | None = None) -> tuple[list[str], int]:
    """The split group id of each accepted image (merged exact-bytes, near-duplicate and group_pattern groups),
    and how many keys group_pattern did not match.

    Near-duplicates (dedupe=near) by `method`: phash (within `distance` bits) or dct (descriptor.py, cosine >=
    `similarity`). `merged`, when given, receives each near-duplicate pair found as (key, key, score).
    """
    n = len(accepted)
    uf = UnionFind(n)
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(accepted):
        by_sha[item.info.sha256].append(i)
    for members in by_sha.values():
        uf.union_all(members)
    pattern = pattern_ids([x.key for x in accepted], group_pattern) if group_pattern else [None] * n
    by_pattern: dict[str, list[int]] = defaultdict(list)
    for i, pid in enumerate(pattern):
        if pid is not None:
            by_pattern[pid].append(i)
    for members in by_pattern.values():
        uf.union_all(members)
    unmatched = sum(1 for pid in pattern if pid is None) if group_pattern else 0
    if group_pattern and n and unmatched == n:
        raise IngestError(f"group_pattern {group_pattern!r} matches none of the {n} accepted keys, e.g. "
                          f"{accepted[0].key!r}")
    if dedupe == "near" and n > 1 and method == "dct":
        pairs, scores = descriptor_pairs([x.info.descriptor for x in accepted], similarity)
        for (a, b), score in zip(pairs.tolist(), scores.tolist(), strict=True):
            uf.union(a, b)
            if merged is not None:
                merged.append((accepted[a].key, accepted[b].key, round(score, 4)))
        log.info("near-duplicates: %d pairs of %d images (dct, cosine >= %g)", len(pairs), n, similarity)
    elif dedupe == "near" and n > 1:
        canon = np.array([x.info.phash for x in accepted], dtype=np.uint64)
        unique, first, inverse = np.unique(canon, return_index=True, return_inverse=True)
        for i, rep in enumerate(first[inverse]):
            uf.union(i, int(rep))  # identical perceptual hash: distance 0
        pairs = near_duplicate_pairs(unique.tolist(), [accepted[int(r)].info.phash_variants for r in first], distance)
        for a, b in pairs.tolist():
            uf.union(int(first[a]), int(first[b]))
        if merged is not None:
            merged.extend((accepted[i].key, accepted[j].key, hamming(int(canon[i]), int(canon[j])))
                          for i, j in _phash_merged(first, inverse, pairs))
        log.info("near-duplicates: %d distinct perceptual hashes, %d close pairs (distance <= %d)", len(unique),
                 len(pairs), distance)
    members_of: dict[int, list[int]] = defaultdict(list)
    for i, root in enumerate(uf.components()):
        members_of[root].append(i)
    names = [""] * n
    for members in members_of.values():
        sources = [pattern[i] for i in members if pattern[i] is not None]
        name = f"p:{min(sources)}" if sources else f"h:{min(accepted[i].info.sha256 for i in members)[:16]}"
        for i in members:
            names[i] = name
    return names, unmatched
