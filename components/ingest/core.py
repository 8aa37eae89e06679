"""Ingest: list a class-folder image dataset in S3, validate and hash every object, group, split, write `manifest`.

Input layout (DESIGN.md §1): s3://bucket/prefix/<class>/<any sub-path>/<file>. Output (DESIGN.md §2), in `out_dir`:
manifest.parquet (one row per accepted image), classes.json, ingest_report.json (counts and every rejected
object with its reason). Accepted + rejected always equals the objects listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from minio import Minio
from minio.error import S3Error
from PIL import Image

from components.common import s3 as s3lib
from components.common.log import get_logger
from components.common.settings import S3Settings
from components.ingest import DEDUPE_MODES, DEFAULT_NEAR_DUPLICATE_DISTANCE, grouping
from components.ingest.imaging import ImageInfo, RejectedObject, inspect_image
from components.ingest.split import SPLITS, check_ratios, split_groups

log = get_logger("ingest")

MANIFEST = "manifest.parquet"
CLASSES = "classes.json"
REPORT = "ingest_report.json"
LIST_PAGE = 1000
# Reasons that make an object *bad* (counted against max_bad_fraction); duplicates are not bad.
BAD_REASONS = {"empty", "not_an_image", "unsupported_format", "corrupt", "too_large", "not_in_class_folder",
               "bad_class_folder", "unsafe_key", "conflicting_label", "vanished"}
MANIFEST_SCHEMA = pa.schema([
    ("uri", pa.string()), ("label", pa.string()), ("label_index", pa.int32()), ("split", pa.string()),
    ("sha256", pa.string()), ("phash", pa.string()), ("group", pa.string()), ("bytes", pa.int64()),
    ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()),
])


class IngestError(RuntimeError):
    """The dataset cannot produce a usable manifest (too many bad objects, too few classes, …)."""


@dataclass
class Listed:
    key: str
    size: int
    label: str = ""
    info: ImageInfo | None = None
    reason: str = ""
    detail: str = ""


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
    train_ratio: float = 0.7,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    dedupe: str = "near",
    near_duplicate_distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE,
    group_pattern: str = "",
    expected_num_classes: int = 0,
    min_images_per_class: int = 1,
    allow_small_classes: bool = False,
    max_image_pixels: int = 89_478_485,
    max_bad_fraction: float = 0.05,
    max_workers: int = 16,
    max_object_bytes: int = 256 * 2**20,
    settings: S3Settings | None = None,
) -> IngestResult:
    """Build the `manifest` artifact of the images under `data_uri` in `out_dir` (see module docstring)."""
    ratios = {"train": train_ratio, "val": val_ratio, "test": test_ratio}
    check_ratios(ratios)
    if dedupe not in DEDUPE_MODES:
        raise ValueError(f"dedupe must be one of {', '.join(DEDUPE_MODES)}, got {dedupe!r}")
    if not 0 <= near_duplicate_distance <= 32:
        raise ValueError(f"near_duplicate_distance must be 0..32 bits, got {near_duplicate_distance}")
    if group_pattern:
        grouping.compile_group_pattern(group_pattern)
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    if max_image_pixels < 1 or min_images_per_class < 1 or expected_num_classes < 0:
        raise ValueError("max_image_pixels and min_images_per_class must be >= 1, expected_num_classes >= 0")
    out_dir = Path(out_dir)
    settings = settings or S3Settings.from_env()
    s3 = s3lib.client(settings, max_connections=max_workers)
    bucket, prefix = s3lib.split_uri(data_uri)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    root_uri = s3lib.join_uri(bucket, prefix)

    started = time.monotonic()
    listed, markers = _read_all(s3, settings.endpoint_url, bucket, prefix, max_workers, max_object_bytes,
                                max_image_pixels)
    if not listed:
        raise IngestError(f"no objects under {root_uri} (endpoint {settings.endpoint_url}); expected "
                          f"<class>/<file> images below that prefix")
    log.info("read %d objects in %.1fs", len(listed), time.monotonic() - started)

    _reject_duplicates(listed, bucket, dedupe)
    accepted = sorted((x for x in listed if not x.reason), key=lambda x: x.key)
    rejected = sorted((x for x in listed if x.reason), key=lambda x: x.key)
    assert len(accepted) + len(rejected) == len(listed), "every listed object is either accepted or rejected"

    classes = sorted({x.label for x in accepted})
    groups, unmatched = _groups(accepted, dedupe, near_duplicate_distance, group_pattern)
    group_labels: dict[str, list[str]] = defaultdict(list)
    for item, group in zip(accepted, groups, strict=True):
        group_labels[group].append(item.label)
    assignment = split_groups(group_labels, ratios) if accepted else {}
    splits = [assignment[g] for g in groups]

    report = _report(root_uri, listed, accepted, rejected, classes, groups, splits, markers, unmatched, ratios,
                     dict(dedupe=dedupe, near_duplicate_distance=near_duplicate_distance, group_pattern=group_pattern,
                          max_image_pixels=max_image_pixels, max_bad_fraction=max_bad_fraction,
                          max_object_bytes=max_object_bytes))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, CLASSES):  # a failed run must not leave an older manifest looking current
        (out_dir / stale).unlink(missing_ok=True)
    _write_json(out_dir / REPORT, report)
    _check(report, classes, root_uri, expected_num_classes, min_images_per_class, allow_small_classes,
           max_bad_fraction, ratios)

    class_to_index = {c: i for i, c in enumerate(classes)}
    table = pa.Table.from_pydict({
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
    }, schema=MANIFEST_SCHEMA)
    tmp = out_dir / f".{MANIFEST}.tmp"
    pq.write_table(table, tmp)
    tmp.replace(out_dir / MANIFEST)
    _write_json(out_dir / CLASSES, {"classes": classes, "class_to_index": class_to_index})
    digest = hashlib.sha256((out_dir / MANIFEST).read_bytes()).hexdigest()
    log.info("manifest: %d images, %d classes, %d groups, splits %s, %d rejected; wrote %s",
             len(accepted), len(classes), report["num_groups"], report["per_split"], len(rejected), out_dir)
    return IngestResult(out_dir, classes, len(accepted), report["num_groups"], report["per_split"], digest, report)


# ----- reading -----------------------------------------------------------------------------------
def iter_listing(s3: Minio, endpoint: str, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under `prefix`, one page at a time; a failed page is retried from the last key."""
    last = None
    while True:
        page = s3lib.retry(
            lambda after=last: list(islice(s3.list_objects(bucket, prefix=prefix, recursive=True, start_after=after),
                                           LIST_PAGE)),
            what=f"list s3://{bucket}/{prefix}", endpoint=endpoint, bucket=bucket)
        for obj in page:
            yield obj.object_name, obj.size or 0
        if len(page) < LIST_PAGE:
            return
        last = page[-1].object_name


def _check_object(s3: Minio, endpoint: str, bucket: str, item: Listed, max_image_pixels: int) -> Listed:
    try:
        data = s3lib.read_object(s3, bucket, item.key, endpoint=endpoint)
    except S3Error as exc:
        if exc.code != "NoSuchKey":
            raise
        item.reason, item.detail = "vanished", "listed but gone when read (deleted during ingest?)"
        return item
    item.size = len(data)  # the bytes actually hashed, even if the object was replaced after listing
    try:
        item.info = inspect_image(data, max_image_pixels)
    except RejectedObject as exc:
        item.reason, item.detail = exc.reason, str(exc)
    return item


def _classify(item: Listed, prefix: str, max_object_bytes: int) -> bool:
    """Set the label from the key, or a rejection that needs no read; True if the object must be read."""
    parts = item.key[len(prefix):].split("/")
    if any(part in (".", "..") for part in parts):
        item.reason, item.detail = "unsafe_key", "key has a '.' or '..' path segment (could escape a local folder)"
    elif len(parts) < 2:
        item.reason, item.detail = "not_in_class_folder", "object directly under the prefix, not in a <class>/ folder"
    elif not parts[0]:
        item.reason, item.detail = "bad_class_folder", "empty class folder name (a '//' in the key)"
    elif item.size > max_object_bytes:
        item.reason, item.detail = "too_large", f"{item.size:,} bytes exceeds max_object_bytes={max_object_bytes:,}"
    else:
        item.label = parts[0]
        return True
    return False


def _read_all(s3: Minio, endpoint: str, bucket: str, prefix: str, max_workers: int, max_object_bytes: int,
              max_image_pixels: int) -> tuple[list[Listed], int]:
    """Stream the listing into a bounded pool that reads and checks each object; returns (items, folder markers)."""
    if not s3lib.retry(lambda: s3.bucket_exists(bucket), what=f"check bucket {bucket}", endpoint=endpoint,
                       bucket=bucket):
        raise s3lib.S3AccessError(f"S3 at {endpoint} refused bucket {bucket!r}: bucket does not exist (NoSuchBucket)")
    items: list[Listed] = []
    markers = 0
    pending: set[Future] = set()
    done_count = 0
    last_log = time.monotonic()
    started = last_log
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # inspect_image applies max_image_pixels itself, before decoding
    try:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ingest") as pool:
            def drain(block_until: int) -> None:
                nonlocal pending, done_count, last_log
                while len(pending) > block_until:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()  # re-raises S3 access errors at once
                    done_count += len(finished)
                    if time.monotonic() - last_log > 5:
                        last_log = time.monotonic()
                        log.info("checked %d of %d listed objects (%.0f/s)", done_count, len(items),
                                 done_count / (last_log - started))

            try:
                for key, size in iter_listing(s3, endpoint, bucket, prefix):
                    if key.endswith("/"):
                        markers += 1  # a "folder" placeholder some tools create, not an object
                        continue
                    item = Listed(key, size)
                    items.append(item)
                    if _classify(item, prefix, max_object_bytes):
                        pending.add(pool.submit(_check_object, s3, endpoint, bucket, item, max_image_pixels))
                        drain(4 * max_workers)
                drain(0)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    return items, markers


# ----- deduplication and groups ------------------------------------------------------------------
def _reject_duplicates(listed: list[Listed], bucket: str, dedupe: str) -> None:
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


def _groups(accepted: list[Listed], dedupe: str, distance: int, group_pattern: str) -> tuple[list[str], int]:
    """The split group id of each accepted image (merged exact-bytes, near-duplicate and group_pattern groups),
    and how many keys group_pattern did not match."""
    n = len(accepted)
    uf = grouping.UnionFind(n)
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(accepted):
        by_sha[item.info.sha256].append(i)
    for members in by_sha.values():
        uf.union_all(members)
    pattern = grouping.pattern_ids([x.key for x in accepted], group_pattern) if group_pattern else [None] * n
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
    if dedupe == "near" and n > 1:
        canon = np.array([x.info.phash for x in accepted], dtype=np.uint64)
        unique, first, inverse = np.unique(canon, return_index=True, return_inverse=True)
        for i, rep in enumerate(first[inverse]):
            uf.union(i, int(rep))  # identical perceptual hash: distance 0
        pairs = grouping.near_duplicate_pairs(unique.tolist(), [accepted[int(r)].info.phash_variants for r in first],
                                              distance)
        for a, b in pairs.tolist():
            uf.union(int(first[a]), int(first[b]))
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


# ----- report and checks -------------------------------------------------------------------------
def _report(root_uri, listed, accepted, rejected, classes, groups, splits, markers, unmatched, ratios,
            params) -> dict:
    per_class = {c: dict.fromkeys((*SPLITS, "total"), 0) for c in classes}
    for item, split in zip(accepted, splits, strict=True):
        per_class[item.label][split] += 1
        per_class[item.label]["total"] += 1
    group_sizes = Counter(groups)
    by_reason = Counter(x.reason for x in rejected)
    bad = sum(n for reason, n in by_reason.items() if reason in BAD_REASONS)
    bucket = s3lib.split_uri(root_uri)[0]
    return {
        "data_uri": root_uri,
        "listed_objects": len(listed),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "bad_objects": bad,
        "bad_fraction": round(bad / len(listed), 6),
        "folder_markers_ignored": markers,
        "num_classes": len(classes),
        "classes": classes,
        "per_class": per_class,
        "per_split": {s: splits.count(s) for s in SPLITS},
        "num_groups": len(group_sizes),
        "largest_group": max(group_sizes.values(), default=0),
        "groups_with_more_than_one_image": sum(1 for n in group_sizes.values() if n > 1),
        "group_pattern_unmatched": unmatched,
        "warnings": _warnings(group_sizes, len(accepted), unmatched, ratios),
        "ratios": ratios,
        "params": params,
        "rejected_objects": [{"uri": s3lib.join_uri(bucket, x.key), "reason": x.reason, "detail": x.detail}
                             for x in rejected],
    }


def _warnings(group_sizes: Counter, n: int, unmatched: int, ratios: dict[str, float]) -> list[str]:
    """Signs that the split groups may not be what the user meant."""
    out = []
    smallest = min(r for r in ratios.values() if r > 0)
    largest = max(group_sizes.values(), default=0)
    if largest >= 10 and largest > smallest * n:
        out.append(f"the largest split group holds {largest} of {n} images, more than the smallest split's share "
                   f"({smallest:.0%}): near-duplicate chains or a broad group_pattern merged many images; check "
                   f"near_duplicate_distance / group_pattern")
    if unmatched:
        out.append(f"group_pattern did not match {unmatched} of {n} keys: those are grouped by content only")
    for warning in out:
        log.warning("%s", warning)
    return out


def _check(report, classes, root_uri, expected_num_classes, min_images_per_class, allow_small_classes,
           max_bad_fraction, ratios) -> None:
    if report["bad_fraction"] > max_bad_fraction:
        bad = [f"{r['uri']}: {r['reason']}" for r in report["rejected_objects"] if r["reason"] in BAD_REASONS]
        examples = "; ".join(bad[:5])
        raise IngestError(f"{report['bad_objects']} of {report['listed_objects']} objects under {root_uri} are bad "
                          f"({report['bad_fraction']:.1%} > max_bad_fraction={max_bad_fraction:.1%}): "
                          f"{report['rejected_by_reason']}; e.g. {examples}; all listed in {REPORT}")
    found = f"found {len(classes)}: {', '.join(classes) or '(none)'}"
    if expected_num_classes and len(classes) != expected_num_classes:
        raise IngestError(f"expected_num_classes={expected_num_classes} but {found} (under {root_uri})")
    if len(classes) < 2:
        raise IngestError(f"a classifier needs at least 2 classes with accepted images under {root_uri}; {found}")
    small = {c: n["total"] for c, n in report["per_class"].items() if n["total"] < min_images_per_class}
    if small:
        raise IngestError(f"classes with fewer than min_images_per_class={min_images_per_class} accepted images: "
                          f"{small}")
    active = [s for s in SPLITS if ratios[s] > 0]
    empty = {c: [s for s in active if n[s] == 0] for c, n in report["per_class"].items()}
    empty = {c: s for c, s in empty.items() if s}
    if empty and not allow_small_classes:
        detail = "; ".join(f"{c} ({report['per_class'][c]['total']} images): no image in {', '.join(s)}"
                           for c, s in empty.items())
        raise IngestError(f"classes too small to give every split an image: {detail}. Add images (or distinct "
                          f"groups), change the ratios, or set allow_small_classes")
    for c, s in empty.items():
        log.warning("class %s has no image in split(s) %s (allowed by allow_small_classes)", c, ", ".join(s))


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    tmp.replace(path)
