"""Ingest: list a class-folder image dataset in S3, validate and hash every object, group, split, write `manifest`.

Input layout (docs/DESIGN.md §1): s3://bucket/prefix/<class>/<any sub-path>/<file>. Output (docs/DESIGN.md §2),
in `out_dir`: manifest.parquet (one row per accepted image), classes.json, ingest_report.json (counts and every
rejected object with its reason), ingest_report.html (the same for a person, with thumbnails of the merged
near-duplicate pairs nearest the threshold). Accepted + rejected always equals the objects listed (hidden and system files
aside: they are only counted). A run first removes those files from `out_dir`, so that a run which fails at any
point never leaves an earlier run's output looking current.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tlpipe.components.common import manifest
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.components.common.settings import S3Settings
from tlpipe.components.ingest import report as reportlib
from tlpipe.components.ingest import report_html, tracking
from tlpipe.components.ingest.grouping import group_ids, reject_duplicates
from tlpipe.components.ingest.params import IngestParams
from tlpipe.components.ingest.reader import read_all
from tlpipe.components.ingest.report import IngestError
from tlpipe.components.ingest.split import split_groups

log = get_logger("ingest")


@dataclass
class IngestResult:
    out_dir: Path
    classes: list[str]
    num_images: int
    num_groups: int
    split_counts: dict[str, int]
    manifest_sha256: str
    report: dict = field(repr=False)


def ingest(
    data_uri: str,
    out_dir: str | os.PathLike,
    *,
    train_ratio: float = IngestParams.train_ratio,
    val_ratio: float = IngestParams.val_ratio,
    test_ratio: float = IngestParams.test_ratio,
    dedupe: str = IngestParams.dedupe,
    near_duplicate_distance: int = IngestParams.near_duplicate_distance,
    near_duplicate_method: str = IngestParams.near_duplicate_method,
    near_duplicate_similarity: float = IngestParams.near_duplicate_similarity,
    group_pattern: str = IngestParams.group_pattern,
    expected_num_classes: int = IngestParams.expected_num_classes,
    min_images_per_class: int = IngestParams.min_images_per_class,
    allow_small_classes: bool = IngestParams.allow_small_classes,
    max_image_pixels: int = IngestParams.max_image_pixels,
    max_bad_fraction: float = IngestParams.max_bad_fraction,
    max_workers: int = IngestParams.max_workers,
    max_object_bytes: int = IngestParams.max_object_bytes,
    memory_budget_mb: int = IngestParams.memory_budget_mb,
    allow_similar_class_names: bool = IngestParams.allow_similar_class_names,
    settings: S3Settings | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    manifest_uri: str | None = None,
) -> IngestResult:
    """Build the `manifest` artifact of the images under `data_uri` in `out_dir` (see module docstring).

    In a pipeline run with MLflow configured, its params and the manifest data set (`manifest_uri`: where the
    artifact lives, default `out_dir`) go on the pipeline's parent run in `experiment` (tracking.py).
    """
    params = IngestParams(
        train_ratio=train_ratio, val_ratio=val_ratio, test_ratio=test_ratio, dedupe=dedupe,
        near_duplicate_distance=near_duplicate_distance, near_duplicate_method=near_duplicate_method,
        near_duplicate_similarity=near_duplicate_similarity, group_pattern=group_pattern,
        expected_num_classes=expected_num_classes, min_images_per_class=min_images_per_class,
        allow_small_classes=allow_small_classes, max_image_pixels=max_image_pixels,
        max_bad_fraction=max_bad_fraction, max_workers=max_workers, max_object_bytes=max_object_bytes,
        memory_budget_mb=memory_budget_mb, allow_similar_class_names=allow_similar_class_names,
    )  # checks every parameter
    out_dir = Path(out_dir)
    manifest.clear(out_dir)  # before any work: a run failing anywhere (S3 down, killed) leaves no older output
    settings = settings or S3Settings.from_env()
    s3 = s3lib.client(settings, max_connections=max_workers)
    bucket, prefix = s3lib.split_uri(data_uri)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    root_uri = s3lib.join_uri(bucket, prefix)

    started = time.monotonic()
    listed, markers, hidden = read_all(s3, settings.endpoint_url, bucket, prefix, max_workers, max_object_bytes,
                                       max_image_pixels, memory_budget_mb)
    if not listed:
        raise IngestError(f"no objects under {root_uri} (endpoint {settings.endpoint_url}); expected "
                          f"<class>/<file> images below that prefix")
    log.info("read %d objects in %.1fs", len(listed), time.monotonic() - started)

    reject_duplicates(listed, bucket, dedupe)
    accepted = sorted((x for x in listed if not x.reason), key=lambda x: x.key)
    rejected = sorted((x for x in listed if x.reason), key=lambda x: x.key)
    assert len(accepted) + len(rejected) == len(listed), "every listed object is either accepted or rejected"

    classes = sorted({x.label for x in accepted})
    merged: list[tuple[str, str, float]] = []
    groups, unmatched = group_ids(accepted, dedupe, near_duplicate_distance, group_pattern,
                                  method=near_duplicate_method, similarity=near_duplicate_similarity, merged=merged)
    group_labels: dict[str, list[str]] = defaultdict(list)
    for item, group in zip(accepted, groups, strict=True):
        group_labels[group].append(item.label)
    assignment = split_groups(group_labels, params.ratios) if accepted else {}
    splits = [assignment[g] for g in groups]

    report = reportlib.build(root_uri, listed, accepted, rejected, classes, groups, splits, markers, hidden,
                             unmatched, merged, params)
    manifest.write_report(out_dir, report)
    manifest.write_report_html(out_dir, report_html.render(report, report_html.thumbnails(
        s3, settings.endpoint_url, reportlib.sampled_uris(report))))
    reportlib.check(report, classes, root_uri, params)

    class_to_index = manifest.class_index(classes)["class_to_index"]
    digest = manifest.write(out_dir, {
        "uri": [s3lib.join_uri(bucket, x.key) for x in accepted],
        "label": [x.label for x in accepted],
        "label_index": [class_to_index[x.label] for x in accepted],
        "split": splits,
        "sha256": [x.info.sha256 for x in accepted],
        "phash": [f"{x.info.phash:016x}" for x in accepted],
        "group": groups,
        "bytes": [x.size for x in accepted],
        "width": [x.info.width for x in accepted],
        "height": [x.info.height for x in accepted],
        "format": [x.info.format for x in accepted],
    }, classes)
    log.info("manifest: %d images, %d classes, %d groups, splits %s, %d rejected, %d hidden or system files ignored; "
             "wrote %s", len(accepted), len(classes), report["num_groups"], report["per_split"], len(rejected), hidden,
             out_dir)
    tracking.log_manifest(out_dir, data_uri, params, digest, manifest_uri, experiment)
    return IngestResult(out_dir, classes, len(accepted), report["num_groups"], report["per_split"], digest, report)
