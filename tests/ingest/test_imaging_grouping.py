"""Image checks, the invariant perceptual hash, near-duplicate search and the group split (no S3 needed)."""

from __future__ import annotations

import io
import itertools
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tlpipe.components.common.synthetic import class_image
from tlpipe.components.ingest.grouping import UnionFind, near_duplicate_pairs, pattern_ids
from tlpipe.components.ingest.imaging import RejectedObject, hamming, inspect_image
from tlpipe.components.ingest.params import DEFAULT_NEAR_DUPLICATE_DISTANCE
from tlpipe.components.ingest.report import _warnings
from tlpipe.components.ingest.split import split_groups


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


PHOTO = class_image(1, 3, seed=7, size=96)
DIHEDRAL = [None, *Image.Transpose]  # identity, flips, rotations, transpose, transverse


@pytest.mark.parametrize("transform", DIHEDRAL, ids=lambda t: getattr(t, "name", "IDENTITY"))
def test_phash_is_invariant_to_flips_and_rotations(transform):
    original = inspect_image(encode(PHOTO, "PNG"), 10**8)
    copy = inspect_image(encode(PHOTO if transform is None else PHOTO.transpose(transform), "PNG"), 10**8)
    assert copy.phash == original.phash
    assert copy.sha256 != original.sha256 or transform is None


def test_phash_separates_different_pictures_and_tolerates_reencoding():
    hashes = [inspect_image(encode(class_image(k % 3, 3, seed=k, size=96), "PNG"), 10**8).phash for k in range(40)]
    closest = min(hamming(a, b) for a, b in itertools.combinations(hashes, 2))
    assert closest > DEFAULT_NEAR_DUPLICATE_DISTANCE
    png = inspect_image(encode(PHOTO, "PNG"), 10**8)
    jpeg = inspect_image(encode(PHOTO, "JPEG", quality=75), 10**8)
    assert hamming(png.phash, jpeg.phash) <= DEFAULT_NEAR_DUPLICATE_DISTANCE


@pytest.mark.parametrize(("mode", "fmt"), [("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"),
                                           ("RGB", "BMP"), ("P", "GIF"), ("RGB", "WEBP"), ("LA", "PNG")])
def test_accepts_every_format_and_mode(mode, fmt):
    info = inspect_image(encode(PHOTO.convert(mode), fmt), 10**8)
    assert (info.format, info.width, info.height) == (fmt, 96, 96)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"just some text pretending to be a JPEG\n", "not_an_image"),
    (encode(PHOTO, "JPEG")[:400], "corrupt"),
    (encode(PHOTO, "PNG")[:-30], "corrupt"),
    (encode(PHOTO, "TIFF"), "unsupported_format"),
])
def test_rejects_bad_bytes_with_a_reason(data, reason):
    with pytest.raises(RejectedObject) as err:
        inspect_image(data, 10**8)
    assert err.value.reason == reason


def test_rejects_images_over_the_pixel_limit_before_decoding():
    with pytest.raises(RejectedObject, match="96x96 = 9,216 pixels exceeds max_image_pixels=9,000") as err:
        inspect_image(encode(PHOTO, "PNG"), 9000)
    assert err.value.reason == "too_large"


def test_near_duplicate_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    n, d = 600, DEFAULT_NEAR_DUPLICATE_DISTANCE
    canon = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    for i in range(0, 200, 2):  # plant pairs at distance 1..d+2 (some just too far)
        bits = rng.choice(64, size=1 + i % (d + 2), replace=False)
        canon[i + 1] = canon[i] ^ np.uint64(sum(1 << int(b) for b in bits))
    variants = np.stack([canon] + [rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)] * 7, axis=1)
    variants[300, 5] = canon[301] ^ np.uint64(0b101)  # a rotated copy: matched through a variant
    got = {tuple(p) for p in near_duplicate_pairs(canon.tolist(), variants.tolist(), d).tolist()}
    # brute force: min over i's variants of the distance to j's canonical hash, for all (i, j)
    dist = np.bitwise_count(variants[:, :, None] ^ canon[None, None, :]).min(axis=1)
    close = (dist <= d) | (dist.T <= d)
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(close, 1)), strict=True)}
    assert (300, 301) in expected and len(expected) > 50
    assert got == expected


def test_union_find_and_pattern_ids():
    uf = UnionFind(6)
    uf.union_all([0, 2, 4])
    uf.union(4, 5)
    roots = uf.components()
    assert len({roots[i] for i in (0, 2, 4, 5)}) == 1 and len(set(roots)) == 3
    keys = ["c/20150413_165229_B562_fish1_frame22.png", "c/x/20150413_165229_B562_fish2_frame3.png", "c/other.png"]
    assert pattern_ids(keys, r"([^/]+)_fish\d+_frame\d+\.png$") == ["20150413_165229_B562"] * 2 + [None]
    with pytest.raises(ValueError, match="needs a capture group"):
        pattern_ids(keys, r"fish\d+")


def test_split_is_deterministic_stratified_and_covers_every_split():
    rng = random.Random(1)
    groups = {f"g{i}": [f"c{i % 3}"] * rng.randint(1, 4) + (["c9"] if i % 7 == 0 else []) for i in range(300)}
    ratios = {"train": 0.7, "val": 0.15, "test": 0.15}
    first = split_groups(groups, ratios)
    shuffled = dict(rng.sample(list(groups.items()), len(groups)))
    assert split_groups(shuffled, ratios) == first
    for c in ("c0", "c1", "c2"):
        sizes = {s: sum(len(v) for g, v in groups.items() if v[0] == c and first[g] == s) for s in ratios}
        total = sum(sizes.values())
        for split, ratio in ratios.items():
            assert abs(sizes[split] / total - ratio) < 0.05, (c, sizes)
    salted = split_groups(groups, ratios, salt="1")
    assert salted == split_groups(shuffled, ratios, salt="1") and salted != first
    few = {"a": ["x"] * 5, "b": ["x"], "c": ["x"]}  # 3 groups: one per split, the big one in train
    assert split_groups(few, ratios) == {"a": "train", "b": "test", "c": "val"} or \
        sorted(split_groups(few, ratios).values()) == ["test", "train", "val"]
    assert split_groups(few, ratios)["a"] == "train"
    with pytest.raises(ValueError, match="must be 1"):
        split_groups(few, {"train": 0.7, "val": 0.2, "test": 0.2})


def test_report_warns_when_one_group_swallows_more_than_the_smallest_split():
    ratios = {"train": 0.7, "val": 0.15, "test": 0.15}
    sizes = Counter({"big": 30, **{f"g{i}": 1 for i in range(70)}})
    assert "largest split group holds 30 of 100 images" in _warnings(sizes, 100, 0, ratios)[0]
    assert _warnings(Counter({f"g{i}": 2 for i in range(50)}), 100, 0, ratios) == []
