"""`tlpipe data upload` / `tlpipe ingest`, the KFP adapter under kfp.local, and the real fish photos."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tlpipe.cli.main import main
from tlpipe.components.common.synthetic import write_dataset
from tlpipe.pipelines.settings import ImageSettings

FISH_PATTERN = r"([^/]+?)_(?:no)?fish\d+_frame\d+\.png$"  # video id: the name's part before `_fish` / `_nofish`


def test_upload_is_resumable_and_ingest_cli_writes_the_manifest(stack, bucket, tmp_path, capsys):
    folder = tmp_path / "data"
    files = write_dataset(folder, num_classes=3, per_class=5, size=32)
    (folder / ".DS_Store").write_bytes(b"junk")
    uri = f"s3://{bucket}/fish/v1"

    assert main(["data", "upload", str(folder), uri, "--max-workers", "4"]) == 0
    assert "15 uploaded" in capsys.readouterr().out
    assert main(["data", "upload", str(folder), uri]) == 0
    assert "0 uploaded (0.0 MB), 15 already there with the same sha256, 1 hidden files ignored" in \
        capsys.readouterr().out
    write_dataset(folder, num_classes=3, per_class=5, size=32, seed=1)  # new content under the same names
    files[0].write_bytes(files[1].read_bytes())  # and a duplicate: uploaded, then dropped by ingest
    assert main(["data", "upload", str(folder), uri]) == 0
    assert "15 uploaded" in capsys.readouterr().out

    assert main(["data", "upload", str(folder), "s3://no-such-bucket-y/x"]) != 0
    assert "tlpipe: error: S3 at " in (err := capsys.readouterr().err) and "Traceback" not in err
    assert "bucket 'no-such-bucket-y' does not exist" in err

    out = tmp_path / "manifest"
    assert main(["ingest", uri, "--out", str(out), "--max-workers", "4", "--expected-num-classes", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert printed["num_images"] == len(rows) == 14 and printed["rejected"] == 1
    assert printed["classes"] == ["class_00", "class_01", "class_02"]
    assert printed["hidden_ignored"] == 0 and printed["near_duplicate_pairs_merged"] == 0  # upload skipped .DS_Store
    assert printed["report"] == str(out / "ingest_report.html") and "<h2>Near-duplicates</h2>" in Path(
        printed["report"]).read_text()
    assert all(r["uri"].startswith(f"{uri}/class_") for r in rows)


def test_kfp_adapter_writes_the_artifact_and_metadata(stack, bucket, tmp_path, kfp_local, s3_client):
    from kfp import dsl

    from tlpipe.components.common import s3 as s3lib
    from tlpipe.components.ingest.component import ingest_op

    s3lib.upload_dir(s3_client, write_dataset(tmp_path / "data", num_classes=3, per_class=6, size=32)[0].parents[1],
                     f"s3://{bucket}/ds")
    op = dsl.component(ingest_op, base_image=ImageSettings().for_step("ingest"), install_kfp_package=False)
    task = op(data_uri=f"s3://{bucket}/ds", max_workers=4, expected_num_classes=3, near_duplicate_method="phash",
              memory_budget_mb=64)
    assert task.outputs["Output"] == 3
    manifest = task.outputs["manifest"]
    rows = pq.read_table(f"{manifest.path}/manifest.parquet").to_pylist()
    meta = manifest.metadata
    assert meta["num_images"] == len(rows) == 18 and meta["num_classes"] == 3
    assert meta["num_train"] + meta["num_val"] + meta["num_test"] == 18 and min(meta["num_val"], meta["num_test"]) >= 3
    assert meta["num_groups"] == 18
    report = json.loads(Path(manifest.path, "ingest_report.json").read_text())
    assert report["near_duplicates"]["method"] == "phash" and report["params"]["near_duplicate_method"] == "phash"
    assert Path(manifest.path, "ingest_report.html").is_file()
    assert meta["manifest_sha256"] == hashlib.sha256(Path(manifest.path, "manifest.parquet").read_bytes()).hexdigest()


@pytest.mark.shared_data
def test_real_fish_frames_split_by_video(stack, bucket, tmp_path, shared_dir, capsys):
    """Frames of one video (several fish, sometimes of several species) never span two splits."""
    source = shared_dir / "data" / "fish-egu2017"
    subset = tmp_path / "fish"
    for species in sorted(p for p in source.iterdir() if p.is_dir()):
        videos = defaultdict(list)
        for png in sorted(species.glob("*.png")):
            videos[re.search(FISH_PATTERN, png.name).group(1)].append(png)
        for video in sorted(videos)[:5]:
            for png in videos[video][:8]:
                (subset / species.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(png, subset / species.name / png.name)
    uri = f"s3://{bucket}/egu2017"
    assert main(["data", "upload", str(subset), uri, "--max-workers", "4"]) == 0
    out = tmp_path / "manifest"
    assert main(["ingest", uri, "--out", str(out), "--group-pattern", FISH_PATTERN, "--expected-num-classes", "7",
                 "--max-workers", "4"]) == 0
    capsys.readouterr()
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    report = json.loads((out / "ingest_report.json").read_text())
    assert len(rows) == sum(1 for _ in subset.rglob("*.png")) and report["group_pattern_unmatched"] == 0
    splits_of_video = defaultdict(set)
    for row in rows:
        splits_of_video[re.search(FISH_PATTERN, row["uri"]).group(1)].add(row["split"])
    assert len(splits_of_video) >= 20
    assert all(len(s) == 1 for s in splits_of_video.values()), {v: s for v, s in splits_of_video.items() if len(s) > 1}
    assert all(all(n[s] >= 1 for s in ("train", "val", "test")) for n in report["per_class"].values())
