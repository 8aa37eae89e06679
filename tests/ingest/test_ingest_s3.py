"""ingest against the real embedded S3 server: every bad input of the issue, determinism, faults, errors."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.ingest.helpers import FaultyProxy, flipped, image_bytes, put, put_dataset
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.settings import S3Settings
from tlpipe.components.ingest import reader
from tlpipe.components.ingest.core import ingest
from tlpipe.components.ingest.reader import Listed, _classify
from tlpipe.components.ingest.report import IngestError

PIXELS = 100 * 100  # max_image_pixels in these tests: the good images are 64x64, the "huge" one 120x120


def read_manifest(out):
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return rows, json.loads((out / "classes.json").read_text()), json.loads((out / "ingest_report.json").read_text())


@pytest.fixture(scope="module")
def messy(s3_client):
    """A dataset holding every bad case of the issue next to good images; returns (uri, {key: expected reason})."""
    bucket = f"messy-{uuid.uuid4().hex[:8]}"
    s3_client.make_bucket(bucket)
    p = "data/v1"
    good = {}
    for k, cls in enumerate(("class_a", "class_b")):
        for i in range(6):
            good[f"{p}/{cls}/img_{i}.png"] = image_bytes(k, 1000 * k + i)
    modes = [("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("RGB", "BMP"), ("P", "GIF"),
             ("RGB", "WEBP"), ("RGB", "JPEG")]
    for i, (mode, fmt) in enumerate(modes):  # class_c: alpha, grayscale, palette, CMYK, every format
        good[f"{p}/class_c/{mode.lower()}_{i}.{fmt.lower()}"] = image_bytes(2, 2000 + i, fmt, mode=mode)
    good[f"{p}/class_b/with space/ünïcødé 🐟 #1.png"] = image_bytes(1, 1500)
    good[f"{p}/class_a/sub..dir/dots..png"] = image_bytes(0, 1600)  # dots, but no `..` segment, nor a hidden name
    jpeg = image_bytes(0, 1700, "JPEG")
    shared = image_bytes(1, 1800)
    bad = {
        f"{p}/class_a/truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        f"{p}/class_a/notes.jpg": (b"this is a text file, not a JPEG\n", "not_an_image"),
        f"{p}/class_b/empty.png": (b"", "empty"),
        f"{p}/class_b/huge.png": (image_bytes(1, 1900, size=120), "too_large"),
        f"{p}/class_a/conflict.png": (shared, "conflicting_label"),
        f"{p}/class_c/conflict.png": (shared, "conflicting_label"),
        f"{p}/class_b/zz_copy_of_img_0.png": (good[f"{p}/class_b/img_0.png"], "duplicate"),
        f"{p}/README.txt": (b"not in a class folder\n", "not_in_class_folder"),
    }
    for key, data in good.items():
        put(s3_client, bucket, key, data)
    for key, (data, _) in bad.items():
        put(s3_client, bucket, key, data)
    put(s3_client, bucket, "data/v1-other/class_a/x.png", image_bytes(0, 1))  # a sibling prefix: not listed
    return s3lib.join_uri(bucket, p), good, {key: reason for key, (_, reason) in bad.items()}


def test_every_bad_input_is_rejected_with_its_reason_and_counts_reconcile(messy, tmp_path):
    uri, good, bad = messy
    bucket = s3lib.split_uri(uri)[0]
    result = ingest(uri, tmp_path, max_image_pixels=PIXELS, max_bad_fraction=0.5, max_workers=4)
    rows, classes, report = read_manifest(tmp_path)

    assert report["listed_objects"] == len(good) + len(bad)
    assert report["accepted"] + report["rejected"] == report["listed_objects"] == len(rows) + len(bad)
    assert {r["uri"]: r["reason"] for r in report["rejected_objects"]} == {
        s3lib.join_uri(bucket, k): reason for k, reason in bad.items()}
    assert all(r["detail"] for r in report["rejected_objects"])
    conflict = next(r for r in report["rejected_objects"] if r["reason"] == "conflicting_label")
    assert "class_a, class_c" in conflict["detail"]
    assert "img_0.png (kept)" in next(r["detail"] for r in report["rejected_objects"] if r["reason"] == "duplicate")

    assert sorted(r["uri"] for r in rows) == sorted(s3lib.join_uri(bucket, k) for k in good)
    assert classes == {"classes": ["class_a", "class_b", "class_c"],
                       "class_to_index": {"class_a": 0, "class_b": 1, "class_c": 2}}
    for row in rows:  # each row describes the very object behind its URI (unicode, spaces and `..` included)
        bucket_, key = s3lib.split_uri(row["uri"])
        data = good[key]
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
        assert row["label"] == key.split("/")[2] and row["label_index"] == classes["class_to_index"][row["label"]]
        assert (row["width"], row["height"]) == (64, 64) and len(row["phash"]) == 16
    assert {r["format"] for r in rows} == {"PNG", "JPEG", "BMP", "GIF", "WEBP"}
    for cls, counts in report["per_class"].items():
        assert all(counts[s] >= 1 for s in ("train", "val", "test")), cls
    assert report["per_split"] == result.split_counts and sum(result.split_counts.values()) == len(rows)
    assert report["bad_objects"] == len(bad) - 1  # a duplicate is not bad


@pytest.mark.parametrize(("key", "reason"), [("p/class_a/../x.png", "unsafe_key"), ("p/./class_a/x.png", "unsafe_key"),
                                             ("p/..", "unsafe_key"), ("p//x.png", "bad_class_folder"),
                                             ("p/x.png", "not_in_class_folder")])
def test_keys_that_could_escape_a_folder_are_rejected_unread(key, reason):
    # SeaweedFS refuses `.`/`..` segments on PUT (and collapses `//`), AWS S3 stores them: checked on the listed key.
    item = Listed(key, 10)
    assert not _classify(item, "p/", 1000) and item.reason == reason and not item.label


def test_too_many_bad_objects_fail_and_the_report_names_them(messy, tmp_path):
    uri, _, bad = messy
    ingest(uri, tmp_path, max_image_pixels=PIXELS, max_bad_fraction=0.5, max_workers=4)  # an earlier, lenient run
    with pytest.raises(IngestError, match=r"objects under .* are bad .* > max_bad_fraction=5.0%.*truncated.jpg"):
        ingest(uri, tmp_path, max_image_pixels=PIXELS, max_workers=4)
    report = json.loads((tmp_path / "ingest_report.json").read_text())
    assert len(report["rejected_objects"]) == len(bad)
    assert not (tmp_path / "manifest.parquet").exists() and not (tmp_path / "classes.json").exists()


def test_split_is_identical_across_runs_and_upload_orders(s3_client, bucket, tmp_path):
    other = f"t-{uuid.uuid4().hex[:12]}"
    s3_client.make_bucket(other)
    put_dataset(s3_client, bucket, "ds", per_class=8)
    put_dataset(s3_client, other, "ds", per_class=8, order=lambda keys: keys[::-1])
    first = ingest(f"s3://{bucket}/ds", tmp_path / "a", max_workers=3)
    second = ingest(f"s3://{bucket}/ds/", tmp_path / "b", max_workers=7)
    reuploaded = ingest(f"s3://{other}/ds", tmp_path / "c", max_workers=5)
    assert first.manifest_sha256 == second.manifest_sha256
    assert (tmp_path / "a/manifest.parquet").read_bytes() == (tmp_path / "b/manifest.parquet").read_bytes()

    def by_key(out):
        return {s3lib.split_uri(r.pop("uri"))[1]: r for r in read_manifest(out)[0]}

    assert by_key(tmp_path / "a") == by_key(tmp_path / "c")
    assert reuploaded.split_counts == first.split_counts
    assert len({r["split"] for r in by_key(tmp_path / "a").values()}) == 3


def test_result_through_a_server_failing_one_request_in_five_equals_the_fault_free_run(
        s3_client, bucket, tmp_path, stack, monkeypatch):
    monkeypatch.setattr(reader, "LIST_PAGE", 4)  # many listing pages, each one a request that may fail
    put_dataset(s3_client, bucket, "ds", per_class=10)
    put(s3_client, bucket, "ds/class_0/broken.jpg", image_bytes(0, 999, "JPEG")[:300])
    clean = ingest(f"s3://{bucket}/ds", tmp_path / "clean", max_workers=4, max_bad_fraction=0.2)
    settings = S3Settings.from_env()
    with FaultyProxy(settings.endpoint_url, every=5) as proxy:
        proxied = S3Settings(proxy.url, settings.access_key, settings.secret_key, settings.region)
        faulty = ingest(f"s3://{bucket}/ds", tmp_path / "faulty", max_workers=4, max_bad_fraction=0.2,
                        settings=proxied)
    assert proxy.injected >= 6 and proxy.requests >= 30
    assert faulty.manifest_sha256 == clean.manifest_sha256
    assert read_manifest(tmp_path / "faulty")[2] == read_manifest(tmp_path / "clean")[2]


def test_flipped_rotated_and_same_source_images_share_one_group_and_split(s3_client, bucket, tmp_path):
    objects = put_dataset(s3_client, bucket, "ds", per_class=9)
    original = objects["ds/class_1/img_004.png"]
    with Image.open(io.BytesIO(original)) as img:  # an odd size: thumbnails of its flips are not exact
        buf = io.BytesIO()
        img.resize((77, 59)).save(buf, "PNG")
    odd = buf.getvalue()
    copies = {"ds/class_1/aug/flip.png": flipped(odd, Image.Transpose.FLIP_LEFT_RIGHT),
              "ds/class_1/aug/rot90.png": flipped(odd, Image.Transpose.ROTATE_90),
              "ds/class_1/aug/rot270.png": flipped(original, Image.Transpose.ROTATE_270),
              "ds/class_1/aug/same.png": odd}
    for key, data in copies.items():
        put(s3_client, bucket, key, data)
    for i in range(3):  # three frames of one video named in the key, in two classes
        put(s3_client, bucket, f"ds/class_{i % 2}/vid42_fish{i}_frame{i}.png", image_bytes(i % 2, 5000 + i))

    ingest(f"s3://{bucket}/ds", tmp_path, group_pattern=r"([^/]+)_fish\d+_frame\d+\.png$", max_workers=4)
    rows, _, report = read_manifest(tmp_path)
    by_key = {s3lib.split_uri(r["uri"])[1]: r for r in rows}
    near = [by_key[k] for k in ("ds/class_1/img_004.png", *copies)]
    assert len({r["group"] for r in near}) == 1 and len({r["split"] for r in near}) == 1
    video = [r for k, r in by_key.items() if "vid42" in k]
    assert {r["group"] for r in video} == {"p:vid42"} and len({r["split"] for r in video}) == 1
    assert report["num_groups"] == len(rows) - (len(near) - 1) - 2
    assert report["group_pattern_unmatched"] == len(rows) - 3
    assert report["warnings"] == [f"group_pattern did not match {len(rows) - 3} of {len(rows)} keys: those are "
                                  f"grouped by content only"]

    off = ingest(f"s3://{bucket}/ds", tmp_path / "off", dedupe="off", max_workers=4)
    assert off.num_groups == len(rows)  # no near-duplicate grouping, no pattern: one group per image


def test_clear_errors_for_unusable_datasets(s3_client, bucket, tmp_path, stack):
    put_dataset(s3_client, bucket, "two", classes=2, per_class=4)
    put_dataset(s3_client, bucket, "one", classes=1, per_class=4)
    put_dataset(s3_client, bucket, "small", classes=2, per_class=2)
    with pytest.raises(IngestError, match=rf"no objects under s3://{bucket}/nothing/"):
        ingest(f"s3://{bucket}/nothing", tmp_path)
    with pytest.raises(IngestError, match=r"at least 2 classes .* found 1: class_0"):
        ingest(f"s3://{bucket}/one", tmp_path)
    with pytest.raises(IngestError, match=r"expected_num_classes=3 but found 2: class_0, class_1"):
        ingest(f"s3://{bucket}/two", tmp_path, expected_num_classes=3)
    with pytest.raises(IngestError, match=r"fewer than min_images_per_class=5 .*'class_0': 4"):
        ingest(f"s3://{bucket}/two", tmp_path, min_images_per_class=5)
    with pytest.raises(IngestError, match=r"too small to give every split an image: class_0 \(2 images\): no image"):
        ingest(f"s3://{bucket}/small", tmp_path)
    assert ingest(f"s3://{bucket}/small", tmp_path, allow_small_classes=True).num_images == 4
    with pytest.raises(ValueError, match="must be 1"):
        ingest(f"s3://{bucket}/two", tmp_path, train_ratio=0.8)
    with pytest.raises(ValueError, match="dedupe must be one of off, exact, near"):
        ingest(f"s3://{bucket}/two", tmp_path, dedupe="fuzzy")

    settings = S3Settings.from_env()
    with pytest.raises(s3lib.S3AccessError, match=rf"S3 at {settings.endpoint_url} .*'no-such-bucket-x'.*not exist"):
        ingest("s3://no-such-bucket-x/data", tmp_path)
    wrong = S3Settings(settings.endpoint_url, settings.access_key, "not-the-secret", settings.region)
    with pytest.raises(s3lib.S3AccessError, match=rf"S3 at {settings.endpoint_url} refused bucket '{bucket}'") as err:
        ingest(f"s3://{bucket}/two", tmp_path, settings=wrong)
    assert settings.secret_key not in str(err.value)


def test_an_object_deleted_after_listing_is_reported_as_vanished(s3_client, bucket, stack):
    item = Listed("ds/class_a/gone.png", 100, label="class_a")
    settings = S3Settings.from_env()
    assert reader._check_object(s3_client, settings.endpoint_url, bucket, item, PIXELS, reader.MemoryBudget(2**20)) \
        is item
    assert (item.reason, item.info) == ("vanished", None)
