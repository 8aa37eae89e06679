"""Near-duplicates on real photos (the fish-egu2017 demo set): rescaled and re-cropped copies share the original's
group and split, different photos of one class do not, and the ingest report (JSON and HTML) shows the merged
pairs with their score and thumbnails."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import defaultdict
from html import escape, unescape
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageChops, ImageStat

from tests.ingest.helpers import put
from tlpipe.components.ingest import descriptor
from tlpipe.components.ingest.core import ingest
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


def _thumbnails(html: str) -> dict[str, Image.Image]:
    """{uri: thumbnail} of the report page's <img> tags (alt is the image's URI)."""
    found = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)" alt="([^"]+)">', html)
    return {unescape(alt): Image.open(io.BytesIO(base64.b64decode(data))).convert("L") for data, alt in found}


def test_ingest_reports_the_merged_pairs_with_scores_and_thumbnails(photos, s3_client, bucket, tmp_path):
    """Through ingest against the real S3: the rescaled and the cropped copy share the original's split, and both
    the JSON and the HTML report show each pair with its score and a thumbnail of each image."""
    chosen = photos[::2][:25]
    original = chosen[0]
    label = original.parent.name
    for p in chosen:
        put(s3_client, bucket, f"ds/{p.parent.name}/{p.name}", p.read_bytes())
    with Image.open(original) as img:
        img = img.convert("RGB")
        w, h = img.size
        put(s3_client, bucket, f"ds/{label}/copy_half.png",
            _png(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)))
        put(s3_client, bucket, f"ds/{label}/copy_crop10.png",
            _png(img.crop((w // 10, h // 10, w - w // 10, h - h // 10))))
    ingest(f"s3://{bucket}/ds", tmp_path, max_workers=4, allow_small_classes=True)

    rows = {r["uri"]: r for r in pq.read_table(tmp_path / "manifest.parquet").to_pylist()}
    first, half, crop = (f"s3://{bucket}/ds/{label}/{name}" for name in (original.name, "copy_half.png",
                                                                           "copy_crop10.png"))
    assert rows[first]["group"] == rows[half]["group"] == rows[crop]["group"]
    assert rows[first]["split"] == rows[half]["split"] == rows[crop]["split"]
    report = json.loads((tmp_path / "ingest_report.json").read_text())
    near = report["near_duplicates"]
    assert near["method"] == "dct" and near["threshold"] == 0.95 and near["merged_pairs"] >= 2
    sample = {frozenset((p["a"], p["b"])): p for p in near["sample"]}
    for copy in (half, crop):
        pair = sample[frozenset((first, copy))]
        assert 0.95 <= pair["score"] <= 1 and pair["labels"] == [label, label]
    assert sum(int(size) * n for size, n in report["group_sizes"].items()) == report["accepted"] == len(rows)
    assert report["group_sizes"]["3"] >= 1  # the original and its two copies

    html = (tmp_path / "ingest_report.html").read_text()
    thumbs = _thumbnails(html)
    assert {first, half, crop} <= set(thumbs)
    with Image.open(original) as img:  # each thumbnail shows its image: the original's thumbnail, near enough
        expected = img.convert("L")
        expected.thumbnail(thumbs[first].size)
    diff = ImageChops.difference(thumbs[first], expected.resize(thumbs[first].size))
    assert ImageStat.Stat(diff).mean[0] < 8
    assert abs(thumbs[half].size[0] / thumbs[half].size[1] - w / h) < 0.05
    for copy in (half, crop):  # the pair's row: both images and its score
        row = next(r for r in html.split("<tr>") if f'alt="{escape(copy)}"' in r and f'alt="{escape(first)}"' in r)
        assert f"<td>{sample[frozenset((first, copy))]['score']}</td>" in row


def test_the_index_used_above_exact_max_finds_the_copies_with_the_exact_scores(photos, monkeypatch):
    """The IVF search (descriptor._indexed) on the demo photos with small cells, so that each query scans only 4 of
    ~13 cells: the copies are found, and every pair it returns is one of the exact search's, with its score."""
    monkeypatch.setattr(descriptor, "CELL", 8)
    monkeypatch.setattr(descriptor, "PROBES", 4)
    with Image.open(photos[3]) as img:
        img = img.convert("RGB")
        w, h = img.size
        copies = [_png(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
                  _png(img.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
                  _png(img.transpose(Image.Transpose.ROTATE_90))]
    blobs = [inspect_image(p.read_bytes(), 10**8).descriptor for p in photos]
    blobs += [inspect_image(c, 10**8).descriptor for c in copies]
    exact_pairs, exact_scores = descriptor.descriptor_pairs(blobs, 0.95, exact_max=len(blobs))
    pairs, scores = descriptor.descriptor_pairs(blobs, 0.95, exact_max=0)
    exact = dict(zip(map(tuple, exact_pairs.tolist()), exact_scores.tolist(), strict=True))
    found = dict(zip(map(tuple, pairs.tolist()), scores.tolist(), strict=True))
    n = len(photos)
    assert {(3, n), (3, n + 1), (3, n + 2)} <= set(found)
    assert all(pair in exact and abs(score - exact[pair]) < 1e-5 for pair, score in found.items())
