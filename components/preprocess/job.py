"""The Spark work of the preprocess step: manifest -> decoded, resized JPEG `tf.train.Example` shards.

Driver: reads the manifest (docs/DESIGN.md §2) through common.manifest (local or s3:// via pyarrow's
S3FileSystem), plans the shards, and writes `schema.json` last (an artifact without it is incomplete).
Executors: fetch each object with the minio SDK (no Hadoop S3A jars needed), decode/convert/resize it with
Pillow, and write one shard per partition atomically (local: temporary name + rename; S3: a single PUT).

Determinism: within a split, examples are ordered by (sha256, uri); example i goes to shard i mod k, and
each shard is sorted by (sha256, uri), so two runs on the same manifest give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tlpipe.components.common import examples, images, manifest
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import S3Settings
from tlpipe.components.preprocess.params import PreprocessParams, check_resize_mode

log = get_logger("preprocess")

TARGET_SHARD_BYTES = 150 * 1024 * 1024  # automatic shard count aims at ~100-200 MB per shard
FETCH_THREADS = 4  # objects fetched and decoded concurrently inside one task (I/O bound)
MAX_LISTED_BAD = 1000  # schema.json lists at most this many bad images (the count is always exact)


class PreprocessError(RuntimeError):
    """The job's output does not reconcile with the manifest (a bad manifest raises ManifestError)."""


class TooManyBadImagesError(PreprocessError):
    """More images failed to decode than `max_bad_fraction` allows."""


@dataclass(frozen=True)
class JobConfig:
    """Parameters of one preprocess run (the command line of preprocess_job.py)."""

    manifest: str
    output: str
    image_size: int = PreprocessParams.image_size
    resize_mode: str = PreprocessParams.resize_mode
    num_shards: int = PreprocessParams.num_shards
    max_bad_fraction: float = PreprocessParams.max_bad_fraction
    jpeg_quality: int = PreprocessParams.jpeg_quality
    partitions: int = 0  # spark_options `partitions` (any backend): decode partitions, 0 = automatic

    def validate(self) -> None:
        check_resize_mode(self.resize_mode)
        if not 8 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be within 8..4096, got {self.image_size}")
        if self.num_shards < 0:
            raise ValueError(f"num_shards must be >= 0 (0 = automatic), got {self.num_shards}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be within 0..1, got {self.max_bad_fraction}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within 1..100, got {self.jpeg_quality}")
        if self.partitions < 0:
            raise ValueError(f"partitions must be >= 0 (0 = automatic), got {self.partitions}")


# ----- storage: local paths or s3:// -------------------------------------------------------------
def s3_filesystem(settings: S3Settings | None = None):
    """pyarrow's S3FileSystem for the configured endpoint (Parquet and small files from/to S3)."""
    from pyarrow import fs

    settings = settings or S3Settings.from_env()
    return fs.S3FileSystem(access_key=settings.access_key, secret_key=settings.secret_key,
                           endpoint_override=settings.host, scheme="https" if settings.secure else "http",
                           region=settings.region)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def read_bytes(uri: str) -> bytes:
    """The bytes of a local file or an s3:// object."""
    if s3lib.is_s3_uri(uri):
        bucket, key = s3lib.split_uri(uri)
        try:
            with s3_filesystem().open_input_stream(f"{bucket}/{key}") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{uri} not found") from exc
    return Path(uri).read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a small file atomically: local temporary name + rename, or one S3 PUT."""
    if s3lib.is_s3_uri(uri):
        bucket, key = s3lib.split_uri(uri)
        s3 = s3lib.client()
        s3lib.retry(lambda: s3.put_object(bucket, key, io.BytesIO(data), len(data)), what=f"write {uri}",
                    bucket=bucket)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def clear_output(output: str) -> int:
    """Remove shards and schema.json a previous run left in `output`, so no stale shard survives."""
    names = [examples.SCHEMA_FILE] + [f"{split}/" for split in examples.SPLITS]
    removed = 0
    if s3lib.is_s3_uri(output):
        s3 = s3lib.client()
        bucket, prefix = s3lib.split_uri(output)
        for name in names:
            for key in s3lib.iter_keys(s3, s3lib.join_uri(bucket, _join(prefix, name) if prefix else name)):
                if key.endswith((".tfrecord", examples.SCHEMA_FILE)):
                    s3.remove_object(bucket, key)
                    removed += 1
        return removed
    root = Path(output)
    for path in [root / examples.SCHEMA_FILE, *root.glob("*/part-*.tfrecord")]:
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


# ----- planning ------------------------------------------------------------------------------------
def plan_shards(counts: dict[str, int], bytes_per_example: float, num_shards: int) -> dict[str, int]:
    """Shards per split: `num_shards` in total (0 = ~TARGET_SHARD_BYTES each), shared in proportion to size.

    Every non-empty split gets at least one shard and never more shards than examples.
    """
    total = sum(counts.values())
    if total == 0:
        return {split: 0 for split in counts}
    wanted = num_shards or math.ceil(total * bytes_per_example / TARGET_SHARD_BYTES)
    return {split: min(n, max(1, round(wanted * n / total))) if n else 0 for split, n in counts.items()}


def estimated_record_bytes(image_size: int, jpeg_quality: int) -> float:
    """A generous estimate of one encoded example (JPEG of a photo: ~0.6 bytes/pixel at quality 95)."""
    return image_size * image_size * (0.25 + 0.4 * jpeg_quality / 100) + 120


def assign_shards(df, shards: dict[str, int]) -> dict[str, tuple[str, int, int]]:
    """uri -> (split, shard index within the split, global partition index), deterministic."""
    assignment = {}
    offset = 0
    for split in examples.SPLITS:
        part = df[df["split"] == split].sort_values(["sha256", "uri"])
        k = shards.get(split, 0)
        for rank, uri in enumerate(part["uri"]):
            assignment[uri] = (split, rank % k, offset + rank % k)
        offset += k
    return assignment


# ----- executors -----------------------------------------------------------------------------------
def _fetch_and_process(s3, row, image_size: int, resize_mode: str, quality: int):
    """(uri, sha256, tf.train.Example bytes, None) or (uri, sha256, None, reason) for one manifest row."""
    from minio.error import S3Error

    uri, label_index, sha256 = row
    bucket, key = s3lib.split_uri(uri)

    try:
        data = s3lib.read_object(s3, bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return uri, sha256, None, "object is missing in S3 (deleted since ingest)"
        raise
    if hashlib.sha256(data).hexdigest() != sha256:
        return uri, sha256, None, "object changed since ingest (sha256 differs from the manifest)"
    try:
        jpeg = images.process(data, image_size, resize_mode, quality)
    except Exception as exc:  # any decoder failure is a bad image, reported with its reason
        return uri, sha256, None, f"cannot decode: {type(exc).__name__}: {exc}"
    return uri, sha256, examples.encode_example(jpeg, int(label_index), sha256.encode()), None


def process_partition(rows: Iterable, image_size: int, resize_mode: str, quality: int) -> Iterator[tuple]:
    """Executor side: fetch and convert the rows of one partition, a few objects at a time."""
    s3 = s3lib.client(max_connections=FETCH_THREADS)
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        chunk = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == 8 * FETCH_THREADS:
                yield from pool.map(lambda r: _fetch_and_process(s3, r, image_size, resize_mode, quality), chunk)
                chunk = []
        yield from pool.map(lambda r: _fetch_and_process(s3, r, image_size, resize_mode, quality), chunk)


def write_shard(uri: str, records: Iterable[bytes]) -> tuple[int, int]:
    """Write one TFRecord shard atomically (local: temp + rename; S3: one PUT); returns (records, bytes)."""
    if not s3lib.is_s3_uri(uri):
        count = examples.write_tfrecord(uri, records)
        return count, os.path.getsize(uri)
    from minio.helpers import MAX_PART_SIZE

    bucket, key = s3lib.split_uri(uri)
    s3 = s3lib.client()
    with tempfile.TemporaryDirectory(prefix="tlpipe-shard-") as tmp:
        path = Path(tmp, "shard.tfrecord")
        count = examples.write_tfrecord(path, records)
        size = path.stat().st_size

        def put():
            with open(path, "rb") as fh:  # part_size = 5 GiB: one PUT, the object appears whole or not at all
                s3.put_object(bucket, key, fh, size, part_size=MAX_PART_SIZE)

        s3lib.retry(put, what=f"write {uri}", bucket=bucket)
    return count, size


def write_partition(index: int, items: Iterator, shard_uris: list[str]) -> Iterator[tuple[int, int, int]]:
    """Executor side: partition `index` holds one shard's (key, record) pairs, already sorted by key."""
    count, size = write_shard(shard_uris[index], (record for _, record in items))
    yield index, count, size


# ----- driver ----------------------------------------------------------------------------------------
def package_zip(dest_dir: str | os.PathLike) -> Path:
    """A zip of `tlpipe.components` (the job's own code) for --py-files / SparkContext.addPyFile.

    Inside the zip the package sits at `tlpipe/components/`, beside an empty `tlpipe/__init__.py`.
    """
    import tlpipe.components

    root = Path(tlpipe.components.__file__).resolve().parent
    path = Path(dest_dir, "tlpipe_components.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tlpipe/__init__.py", "")
        for file in sorted(root.rglob("*.py")):
            if "__pycache__" not in file.parts:
                zf.write(file, f"tlpipe/components/{file.relative_to(root).as_posix()}")
    return path


def ship_package(spark) -> None:
    """Make `tlpipe.components` importable in the executors when it is not already shipped (as a zip)."""
    import tlpipe.components

    if ".zip" in str(tlpipe.components.__file__):  # already on the executors through --py-files / pyFiles
        return
    spark.sparkContext.addPyFile(str(package_zip(tempfile.mkdtemp(prefix="tlpipe-pyfiles-"))))


class StageProgress:
    """Logs Spark's progress (active stages, tasks done/total) every `interval` seconds while a step runs."""

    def __init__(self, spark, step: str, interval: float = 10.0):
        self.tracker = spark.sparkContext.statusTracker()
        self.step, self.interval = step, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for stage_id in self.tracker.getActiveStageIds():
                info = self.tracker.getStageInfo(stage_id)
                if info:
                    log.info("%s: stage %d: %d/%d tasks done (%d running)", self.step, stage_id,
                             info.numCompletedTasks, info.numTasks, info.numActiveTasks)

    def __enter__(self):
        log.info("%s ...", self.step)
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if exc[0] is None:
            log.info("%s: done in %.1f s", self.step, time.monotonic() - self.started)


def run(spark, config: JobConfig) -> dict:
    """Run the preprocess job on `spark`; returns the schema.json it wrote."""
    from pyspark import StorageLevel

    config.validate()
    sc = spark.sparkContext
    df, classes, manifest_sha = manifest.read(config.manifest, read_bytes=read_bytes)
    counts = df["split"].value_counts().to_dict()
    log.info("manifest %s: %d images (%s), %d classes", config.manifest, len(df),
             ", ".join(f"{s} {counts.get(s, 0)}" for s in examples.SPLITS), len(classes))
    removed = clear_output(config.output)
    if removed:
        log.info("removed %d files of an earlier run from %s", removed, config.output)

    partitions = config.partitions or min(len(df), max(2 * sc.defaultParallelism, len(df) // 500))
    rows = list(zip(df["uri"], df["label_index"], df["sha256"], strict=True))
    size, mode, quality = config.image_size, config.resize_mode, config.jpeg_quality
    processed = (sc.parallelize(rows, partitions)
                 .mapPartitions(lambda it: process_partition(it, size, mode, quality))
                 .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        with StageProgress(spark, f"decode and resize {len(df)} images in {partitions} partitions"):
            sc.setJobDescription("tlpipe preprocess: decode and resize")
            bad = sorted(processed.filter(lambda r: r[2] is None).map(lambda r: (r[0], r[3])).collect())
        bad_fraction = len(bad) / len(df)
        for uri, reason in bad[:20]:
            log.warning("bad image %s: %s", uri, reason)
        if bad_fraction > config.max_bad_fraction:
            listed = "; ".join(f"{u}: {r}" for u, r in bad[:5])
            raise TooManyBadImagesError(
                f"{len(bad)} of {len(df)} images ({bad_fraction:.1%}) failed to decode, above max_bad_fraction "
                f"{config.max_bad_fraction:.1%}; nothing was written. First: {listed}")

        good = df[~df["uri"].isin({u for u, _ in bad})]
        good_counts = {s: int((good["split"] == s).sum()) for s in examples.SPLITS}
        shards = plan_shards(good_counts, estimated_record_bytes(size, quality), config.num_shards)
        assignment = assign_shards(good, shards)
        shard_uris = [_join(config.output, split, examples.shard_name(i))
                      for split in examples.SPLITS for i in range(shards[split])]
        where = sc.broadcast({uri: g for uri, (_, _, g) in assignment.items()})
        with StageProgress(spark, f"write {len(shard_uris)} shards to {config.output}"):
            sc.setJobDescription("tlpipe preprocess: write shards")
            written = (processed.filter(lambda r: r[2] is not None)
                       .map(lambda r: ((where.value[r[0]], r[1], r[0]), r[2]))
                       .repartitionAndSortWithinPartitions(len(shard_uris), partitionFunc=lambda k: k[0])
                       .mapPartitionsWithIndex(lambda i, it: write_partition(i, it, shard_uris))
                       .collect())
    finally:
        processed.unpersist()
    return _finish(config, classes, manifest_sha, shards, good_counts, shard_uris, written, bad)


def _finish(config, classes, manifest_sha, shards, good_counts, shard_uris, written, bad) -> dict:
    """Check that every shard holds what was planned, then write schema.json."""
    per_split = {s: 0 for s in examples.SPLITS}
    total_bytes = 0
    for index, count, nbytes in written:
        per_split[shard_uris[index].rsplit("/", 2)[-2]] += count
        total_bytes += nbytes
    if per_split != good_counts or len(written) != len(shard_uris):
        raise PreprocessError(f"written examples {per_split} in {len(written)} shards do not reconcile with the "
                              f"manifest {good_counts} in {len(shard_uris)} shards")
    schema = dict(
        image_size=config.image_size, channels=3, num_examples=per_split, classes=classes, num_shards=shards,
        resize_mode=config.resize_mode, jpeg_quality=config.jpeg_quality, source_manifest_sha256=manifest_sha,
        bad_images={"count": len(bad), "listed": min(len(bad), MAX_LISTED_BAD),
                    "images": [{"uri": u, "reason": r} for u, r in bad[:MAX_LISTED_BAD]]},
        total_bytes=total_bytes, job=asdict(config),
    )
    with tempfile.TemporaryDirectory(prefix="tlpipe-schema-") as tmp:
        examples.write_schema(tmp, **schema)
        write_bytes(_join(config.output, examples.SCHEMA_FILE), Path(tmp, examples.SCHEMA_FILE).read_bytes())
    log.info("wrote %s: %s examples, %s shards, %d bad images, %.1f MB", config.output, per_split, shards, len(bad),
             total_bytes / 1e6)
    return schema
