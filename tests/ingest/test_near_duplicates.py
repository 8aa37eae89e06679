"""Near-duplicates on real photos (the fish-egu2017 demo set): rescaled and re-cropped copies share the original's
group and split, different photos of one class do not, and the merged pairs are reported."""

from __future__ import annotations

import io
import re
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from tlpipe.components.ingest.grouping import group_ids
from tlpipe.components.ingest.imaging import inspect_image
from tlpipe.components.ingest.reader import Listed
from tlpipe.components.ingest.split import split_groups

DEMO = Path(__file__).resolve().parents[2] / "examples" / "fish-egu2017-demo" / "images"
VIDEO = re.compile(r"^(.+?)_(?:no)?fish\d")


def _listed(key: str, data: bytes) -> Listed:
    return Listed(key, len(data), label=key.split("/")[0], info=inspect_image(data, 10**8))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    files = sorted(DEMO.glob("*/*.jpg"))[::6]
    if len(files) < 40:
        pytest.skip(f"demo photos missing under {DEMO}")
    return files


def test_rescaled_and_cropped_copies_join_the_originals_group_and_split(photos):
    original = photos[0]
    with Image.open(original) as img:
        img = img.convert("RGB")
        w, h = img.size
        half = _png(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS))
        cropped = _png(img.crop((w // 10, h // 10, w - w // 10, h - h // 10)))
    label = original.parent.name
    accepted = [_listed(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in photos]
    accepted += [_listed(f"{label}/copy_half.png", half), _listed(f"{label}/copy_crop10.png", cropped)]
    merged: list[tuple[str, str, float]] = []
    groups, _ = group_ids(accepted, "near", 4, "", method="dct", merged=merged)
    key = {x.key: g for x, g in zip(accepted, groups, strict=True)}
    first = f"{label}/{original.name}"
    assert key[f"{label}/copy_half.png"] == key[first] == key[f"{label}/copy_crop10.png"]
    labels = defaultdict(list)
    for x, g in zip(accepted, groups, strict=True):
        labels[g].append(x.label)
    split = split_groups(labels, {"train": 0.7, "val": 0.15, "test": 0.15})
    assert split[key[f"{label}/copy_half.png"]] == split[key[first]] == split[key[f"{label}/copy_crop10.png"]]
    joined = {frozenset(p[:2]) for p in merged}
    assert frozenset((first, f"{label}/copy_half.png")) in joined
    assert frozenset((first, f"{label}/copy_crop10.png")) in joined
    assert all(0.95 <= p[2] <= 1.0 for p in merged)  # the cosine shown next to each merged pair


def test_different_photos_of_one_class_stay_in_different_groups(photos):
    accepted = [_listed(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in photos]
    groups, _ = group_ids(accepted, "near", 4, "", method="dct")
    by_class_video = {}
    for x, g in zip(accepted, groups, strict=True):
        by_class_video.setdefault((x.label, VIDEO.match(x.key.split("/")[1]).group(1)), g)
    for label in {x.label for x in accepted}:
        firsts = [g for (c, _), g in by_class_video.items() if c == label]
        assert len(set(firsts)) == len(firsts), f"{label}: photos of different videos merged"
