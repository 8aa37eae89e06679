"""`tlpipe data upload`: put a class-folder dataset into S3 in parallel, skipping objects already there.

Hidden and system files (`reader.is_ignored`, the rule ingest applies to keys) are counted, never uploaded.
Each object carries the sha256 of its bytes in its metadata (`x-amz-meta-sha256`); a re-run (after an
interruption, or after adding files) uploads only files whose key is missing or whose content changed.
"""

from __future__ import annotations

import mimetypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from minio import Minio
from minio.error import S3Error

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.hashing import sha256_file
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import S3Settings
from tlpipe.components.ingest.params import UploadParams
from tlpipe.components.ingest.reader import SYSTEM_NAMES, is_ignored

log = get_logger("upload")
SHA_META = "sha256"


@dataclass(frozen=True)
class UploadResult:
    uploaded: int
    skipped: int  # already in S3 with the same sha256
    bytes_uploaded: int
    hidden_ignored: int  # files under hidden or system names (.DS_Store, .git/, __MACOSX/, Thumbs.db): not uploaded


def _stored_sha256(s3: Minio, bucket: str, key: str, endpoint: str) -> str | None:
    try:
        stat = s3lib.retry(lambda: s3.stat_object(bucket, key), what=f"stat s3://{bucket}/{key}",
                           endpoint=endpoint, bucket=bucket)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            return None
        raise
    return stat.metadata.get(f"x-amz-meta-{SHA_META}")


def _upload_one(s3: Minio, path: Path, bucket: str, key: str, endpoint: str) -> int | None:
    """Upload `path` unless the same content is already at `key`; returns the bytes sent, None when skipped."""
    sha = sha256_file(path)
    if _stored_sha256(s3, bucket, key, endpoint) == sha:
        return None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    s3lib.retry(lambda: s3.fput_object(bucket, key, str(path), content_type=content_type, metadata={SHA_META: sha}),
                what=f"upload s3://{bucket}/{key}", endpoint=endpoint, bucket=bucket)
    return path.stat().st_size


def upload_folder(folder: str | os.PathLike, uri: str, max_workers: int = UploadParams.max_workers,
                  settings: S3Settings | None = None) -> UploadResult:
    """Upload every file under `folder` to `uri` (s3://bucket/prefix), keeping the relative paths as keys."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    settings = settings or S3Settings.from_env()
    s3 = s3lib.client(settings, max_connections=max_workers)
    bucket, prefix = s3lib.split_uri(uri)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    endpoint = settings.endpoint_url
    if not s3lib.retry(lambda: s3.bucket_exists(bucket), what=f"check bucket {bucket}", endpoint=endpoint,
                       bucket=bucket):
        raise s3lib.S3AccessError(f"S3 at {endpoint}: bucket {bucket!r} does not exist; create it first")

    files, hidden = [], 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if is_ignored(rel.parts):
            hidden += path.is_file()
        elif path.is_file():
            files.append((path, prefix + rel.as_posix()))
    if hidden:
        log.info("ignoring %d hidden or system files (names starting with '.', %s)", hidden,
                 ", ".join(sorted(SYSTEM_NAMES)))
    log.info("uploading %d files from %s to s3://%s/%s with %d workers", len(files), folder, bucket, prefix,
             max_workers)

    uploaded = skipped = sent = 0
    started = last_log = time.monotonic()
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="upload") as pool:
        for done, size in enumerate(pool.map(lambda f: _upload_one(s3, f[0], bucket, f[1], endpoint), files), 1):
            if size is None:
                skipped += 1
            else:
                uploaded, sent = uploaded + 1, sent + size
            if time.monotonic() - last_log > 5 or done == len(files):
                last_log = time.monotonic()
                log.info("%d/%d files: %d uploaded (%.1f MB), %d already there (%.0f files/s)", done, len(files),
                         uploaded, sent / 1e6, skipped, done / max(last_log - started, 1e-9))
    return UploadResult(uploaded, skipped, sent, hidden)
