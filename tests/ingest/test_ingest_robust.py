"""Ingest on the edges (issue 16), against the real embedded S3: hidden and system files, class names that differ
only by case or spaces, an S3 failure mid-run, and the memory budget of the images decoded at once."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from PIL import Image

from tests.ingest.helpers import FaultyProxy, image_bytes, put, put_dataset
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.settings import S3Settings
from tlpipe.components.common.synthetic import write_dataset
from tlpipe.components.ingest import imaging
from tlpipe.components.ingest.core import ingest
from tlpipe.components.ingest.report import IngestError
from tlpipe.components.ingest.upload import upload_folder

ARTIFACT_FILES = ("manifest.parquet", "classes.json", "ingest_report.json")


def test_hidden_and_system_files_are_ignored_and_counted_alike_by_upload_and_ingest(s3_client, bucket, tmp_path):
    folder = tmp_path / "data"
    write_dataset(folder, num_classes=3, per_class=4, size=32, image_format="PNG")
    hidden = {".DS_Store": b"\0\0\0\1Bud1", "class_00/.DS_Store": b"\0\0\0\1Bud1",
              ".hidden_dir/img.png": image_bytes(0, 1, size=32),  # a valid image: must not become a class
              "class_01/.thumbs/img.png": image_bytes(1, 2, size=32), "class_02/..sub../img.png": image_bytes(2, 3),
              "__MACOSX/class_00/._img_00000.png": b"\0\5\26\7", "class_02/Thumbs.db": b"\xd0\xcf\x11\xe0",
              "class_01/desktop.ini": b"[.ShellClassInfo]\r\n"}
    for rel, data in hidden.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)

    uploaded = upload_folder(folder, f"s3://{bucket}/tlpipe-upload", max_workers=4)
    assert (uploaded.uploaded, uploaded.hidden_ignored) == (12, len(hidden))
    assert s3lib.upload_dir(s3_client, folder, f"s3://{bucket}/synced") == 12 + len(hidden)  # e.g. `aws s3 sync`

    reports = {}
    for prefix in ("tlpipe-upload", "synced"):
        result = ingest(f"s3://{bucket}/{prefix}", tmp_path / prefix, max_workers=4)
        reports[prefix] = json.loads((tmp_path / prefix / "ingest_report.json").read_text())
        assert result.classes == ["class_00", "class_01", "class_02"] and result.num_images == 12
    synced = reports["synced"]
    assert synced["hidden_objects_ignored"] == uploaded.hidden_ignored == len(hidden)
    assert reports["tlpipe-upload"]["hidden_objects_ignored"] == 0
    assert (synced["listed_objects"], synced["rejected"], synced["bad_objects"]) == (12, 0, 0)


def test_class_folders_differing_only_by_case_or_spaces_fail_naming_them(s3_client, bucket, tmp_path):
    for i, folder in enumerate(("cat", "cat ", "Cat", "dog", "Dog")):
        for j in range(3):
            put(s3_client, bucket, f"pets/{folder}/img_{j}.png", image_bytes(i % 3, 100 * i + j))
    with pytest.raises(IngestError) as err:
        ingest(f"s3://{bucket}/pets", tmp_path, max_workers=4)
    assert str(err.value).count("\n") == 0
    assert "'Cat', 'cat', 'cat '; 'Dog', 'dog'" in str(err.value) and "allow_similar_class_names" in str(err.value)
    assert not (tmp_path / "manifest.parquet").exists()

    result = ingest(f"s3://{bucket}/pets", tmp_path, max_workers=4, allow_similar_class_names=True,
                    allow_small_classes=True)
    assert result.classes == ["Cat", "Dog", "cat", "cat ", "dog"]
    assert result.report["warnings"] == [
        "class folders 'Cat', 'cat', 'cat ' differ only by case or surrounding spaces and are kept as separate "
        "classes (allow_similar_class_names)",
        "class folders 'Dog', 'dog' differ only by case or surrounding spaces and are kept as separate classes "
        "(allow_similar_class_names)"]


def test_an_s3_failure_mid_ingest_leaves_no_earlier_output_in_out(s3_client, bucket, tmp_path, stack):
    put_dataset(s3_client, bucket, "ds", per_class=6)
    out = tmp_path / "manifest"
    ingest(f"s3://{bucket}/ds", out, max_workers=4)  # an earlier, successful run
    assert all((out / name).exists() for name in ARTIFACT_FILES)

    settings = S3Settings.from_env()
    with FaultyProxy(settings.endpoint_url, every=0, deny="class_1/img_003.png") as proxy:
        proxied = S3Settings(proxy.url, settings.access_key, settings.secret_key, settings.region)
        with pytest.raises(s3lib.S3AccessError, match="access denied"):
            ingest(f"s3://{bucket}/ds", out, max_workers=4, settings=proxied)
    assert proxy.injected >= 1
    assert [name for name in ARTIFACT_FILES if (out / name).exists()] == []


@pytest.fixture
def big_pngs(s3_client, bucket):
    """Six 1100x1100 RGB PNGs (hashed from a 2x reduced copy) in two classes; returns (uri, decode bytes of one)."""
    for i in range(6):
        img = Image.linear_gradient("L").resize((1100, 1100)).rotate(15 * i)
        buf = io.BytesIO()
        Image.merge("RGB", (img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), img)).save(buf, "PNG")
        put(s3_client, bucket, f"big/class_{i % 2}/img_{i}.png", buf.getvalue())
    with Image.open(buf) as img:
        return f"s3://{bucket}/big", len(buf.getvalue()) + imaging.decode_bytes(img)


def test_the_memory_budget_bounds_the_images_decoded_at_once(big_pngs, tmp_path, monkeypatch):
    uri, cost = big_pngs
    decoding, most = 0, []
    lock = threading.Lock()
    real = imaging.phash_variants

    def counting(img):  # runs while the image is decoded and held, inside its reservation
        nonlocal decoding
        with lock:
            decoding += 1
            most[-1] = max(most[-1], decoding)
        time.sleep(0.3)  # long enough for every worker to be decoding at once if nothing stopped it
        try:
            return real(img)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(imaging, "phash_variants", counting)
    mb = cost / 2**20
    for budget in (int(mb * 2.5) + 1, int(mb / 2), 10_000):  # room for 2 images; less than one; unbounded
        most.append(0)
        result = ingest(uri, tmp_path / str(budget), max_workers=6, memory_budget_mb=budget, dedupe="exact",
                        allow_small_classes=True)
        assert result.num_images == 6
    assert most == [2, 1, 6]  # an image larger than the whole budget is decoded alone, not refused
