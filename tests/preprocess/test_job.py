"""The Spark job on local[2] against the real embedded S3: content, counts, bad images, determinism."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tlpipe.components.common import examples
from tlpipe.components.common import manifest as manifest_artifact
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.preprocess import job
from tlpipe.components.preprocess.core import preprocess

REPO = Path(__file__).resolve().parents[2]


def _shards(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("part-*.tfrecord"))}


def test_job_end_to_end_local_and_s3(spark, make_manifest, bucket, s3_client, tmp_path):
    manifest, rows = make_manifest(160, bad=2)
    out = tmp_path / "examples"
    config = job.JobConfig(manifest=str(manifest), output=str(out), image_size=32, num_shards=4)
    schema = job.run(spark, config)

    # counts reconcile with the manifest, the two bad images are reported with their reasons
    good = rows[:160]
    expected = Counter(r["split"] for r in good)
    assert schema["num_examples"] == {s: expected[s] for s in examples.SPLITS}
    assert schema["bad_images"]["count"] == 2
    assert {b["uri"] for b in schema["bad_images"]["images"]} == {r["uri"] for r in rows[160:]}
    assert all(b["reason"].startswith("cannot decode") for b in schema["bad_images"]["images"])
    assert schema["num_shards"] == {"train": 3, "val": 1, "test": 1}  # 4 shards shared by size, >= 1 per split
    assert schema["classes"] == ["angelfish", "bass", "carp"] and schema["resize_mode"] == "squash"
    assert len(schema["source_manifest_sha256"]) == 64
    assert examples.read_schema(out) == schema

    # every record decodes (TensorFlow reader) to 32x32x3 with the label of its object in the manifest
    import tensorflow as tf

    by_sha = {r["sha256"]: r["label_index"] for r in good}
    seen = []
    for split in examples.SPLITS:
        files = examples.split_files(out, split)
        assert len(files) == schema["num_shards"][split]
        for serialized in tf.data.TFRecordDataset(files):
            image, label, sha = examples.parse_example(serialized)
            assert image.shape == (32, 32, 3)
            assert int(label) == by_sha[sha.numpy().decode()]
            seen.append(sha.numpy().decode())
        shas = [examples.parse_example(s)[2].numpy() for s in tf.data.TFRecordDataset(files[:1])]
        assert shas == sorted(shas)  # sorted within a shard
    assert sorted(seen) == sorted(by_sha)

    # a second run gives byte-identical shards; straight to S3 as well
    first = _shards(out)
    job.run(spark, config)
    assert _shards(out) == first
    s3_out = f"s3://{bucket}/artifacts/examples"
    job.run(spark, job.JobConfig(manifest=str(manifest), output=s3_out, image_size=32, num_shards=4))
    fetched = tmp_path / "fetched"
    s3lib.download_dir(s3_client, s3_out, fetched)
    assert _shards(fetched) == first
    assert json.loads((fetched / "schema.json").read_text())["num_examples"] == schema["num_examples"]


def test_manifest_in_s3_and_center_crop(spark, make_manifest, bucket, s3_client, tmp_path):
    manifest, rows = make_manifest(24)
    s3lib.upload_dir(s3_client, manifest, f"s3://{bucket}/manifest")
    schema = preprocess(f"s3://{bucket}/manifest", str(tmp_path / "ex"), image_size=16, resize_mode="center-crop")
    assert sum(schema["num_examples"].values()) == 24 and schema["num_shards"]["train"] == 1
    assert schema["resize_mode"] == "center-crop" and schema["bad_images"]["count"] == 0


def test_too_many_bad_images_fails_and_writes_no_schema(spark, make_manifest, tmp_path):
    manifest, _ = make_manifest(10, bad=2)
    out = tmp_path / "examples"
    with pytest.raises(job.TooManyBadImagesError, match=r"2 of 12 images .* above max_bad_fraction 10.0%.*img_001"):
        job.run(spark, job.JobConfig(manifest=str(manifest), output=str(out), image_size=16, max_bad_fraction=0.1))
    assert not out.exists() or not list(out.rglob("*"))


def test_object_changed_or_deleted_since_ingest_is_reported(spark, make_manifest, s3_client, tmp_path):
    manifest, rows = make_manifest(12)
    bucket, key = s3lib.split_uri(rows[0]["uri"])
    s3_client.remove_object(bucket, key)
    bucket, key = s3lib.split_uri(rows[1]["uri"])
    s3_client.put_object(bucket, key, io.BytesIO(b"xx"), 2)
    schema = job.run(spark, job.JobConfig(manifest=str(manifest), output=str(tmp_path / "ex"), image_size=16,
                                          max_bad_fraction=0.2))
    reasons = {b["uri"]: b["reason"] for b in schema["bad_images"]["images"]}
    assert "missing in S3" in reasons[rows[0]["uri"]] and "sha256 differs" in reasons[rows[1]["uri"]]


def test_manifest_errors_name_the_problem(make_manifest, tmp_path):
    import pyarrow.parquet as pq

    manifest, _ = make_manifest(3)
    table = pq.read_table(manifest / "manifest.parquet")
    pq.write_table(table.drop_columns(["sha256"]), manifest / "manifest.parquet")
    with pytest.raises(manifest_artifact.ManifestError, match=r"lacks columns \['sha256'\]"):
        manifest_artifact.read(str(manifest), read_bytes=job.read_bytes)
    labels = table.column("label").to_pylist()
    pq.write_table(table.set_column(1, "label", [[labels[1]] + labels[1:]]), manifest / "manifest.parquet")
    with pytest.raises(manifest_artifact.ManifestError, match="disagree with classes.json.*img_0000"):
        manifest_artifact.read(str(manifest), read_bytes=job.read_bytes)
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        preprocess(str(manifest), str(tmp_path / "x"), resize_mode="stretch")
    with pytest.raises(ValueError, match="must be an s3:// URI"):
        preprocess(str(manifest), "s3://b/x", spark_backend="k8s")
    with pytest.raises(ValueError, match=r"unknown spark_options for backend 'local': \['driver_mem'\]"):
        preprocess(str(manifest), str(tmp_path / "x"), spark_options={"driver_mem": "1g"})


def test_plan_shards():
    assert job.plan_shards({"train": 700, "val": 150, "test": 150}, 1000, 10) == {"train": 7, "val": 2, "test": 2}
    assert job.plan_shards({"train": 5, "val": 1, "test": 0}, 1000, 40) == {"train": 5, "val": 1, "test": 0}
    auto = job.plan_shards({"train": 70_000, "val": 15_000, "test": 15_000}, 30_000, 0)
    assert auto == {"train": 14, "val": 3, "test": 3}  # 100k x 30 kB = 3 GB -> ~150 MB shards


def test_spark_submit_standalone(make_manifest, tmp_path):
    from pyspark.find_spark_home import _find_spark_home

    manifest, _ = make_manifest(9)
    out = tmp_path / "examples"
    cmd = [str(Path(_find_spark_home(), "bin", "spark-submit")), "--master", "local[1]", "--driver-memory", "512m",
           "--conf", "spark.ui.enabled=false", str(REPO / "components/preprocess/preprocess_job.py"),
           "--manifest", str(manifest), "--output", str(out), "--image-size", "20", "--num-shards", "2"]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYTHONPATH")  # the job finds and ships its own package
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "decode and resize 9 images" in proc.stdout + proc.stderr  # spark-submit sends Python stderr to stdout
    assert examples.read_schema(out)["num_examples"] == {"train": 7, "val": 2, "test": 0}
