"""S3 access through the minio SDK: a client from the environment, URIs, retries, file transfers.

Transient faults (5xx, timeouts, dropped connections) are retried with exponential backoff; auth and
missing-bucket errors fail at once, and an endpoint still unreachable after the retries fails, with an
S3AccessError naming the endpoint and bucket and what to check (never the secret).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import S3Settings

log = get_logger("s3")
T = TypeVar("T")

FATAL_CODES = {
    "AccessDenied": "access denied",
    "InvalidAccessKeyId": "unknown access key",
    "SignatureDoesNotMatch": "wrong secret key (signature does not match)",
    "NoSuchBucket": "bucket does not exist",
    "AllAccessDisabled": "access disabled",
}
WHAT_TO_DO = {
    "AccessDenied": "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (some stores answer a wrong secret so) and "
                    "that the key may use the bucket",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID (locally: `source .tlpipe/stack.env`)",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY (locally: `source .tlpipe/stack.env`)",
    "NoSuchBucket": "create the bucket or fix the s3:// URI",
    "AllAccessDisabled": "ask the store's administrator",
}
TRANSIENT_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "OperationAborted"}


class S3AccessError(RuntimeError):
    """S3 refused the request for a reason retrying cannot fix (credentials, missing bucket), or is unreachable."""


def client(
    settings: S3Settings | None = None, max_connections: int = 10, timeout: float = 120, http_retries: int = 3
) -> Minio:
    """A minio client for the configured endpoint, with a connection pool of `max_connections`.

    `http_retries` are urllib3's own quick retries of 5xx answers, below the backoff of `retry()`.
    """
    settings = settings or S3Settings.from_env()
    http = urllib3.PoolManager(
        maxsize=max_connections,
        timeout=urllib3.Timeout(connect=min(10, timeout), read=timeout),
        retries=urllib3.Retry(total=http_retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
        if http_retries else False,
    )
    return Minio(
        settings.host,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )


def is_s3_uri(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`); the key may be empty."""
    if not is_s3_uri(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket: {uri!r}")
    return bucket, key


def join_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key.lstrip('/')}"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_CODES
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return True
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, urllib3.exceptions.MaxRetryError | urllib3.exceptions.NewConnectionError
                      | urllib3.exceptions.ProtocolError | ConnectionError | TimeoutError)


def connection_reason(exc: BaseException) -> str:
    """Why a connection failed, without the connection object's repr: 'Failed to establish ...: Connection refused'."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason) or type(reason).__name__
    return text[text.index("Failed to"):] if "Failed to" in text else text


def explain(exc: BaseException, endpoint: str, bucket: str, exhausted: bool = False) -> S3AccessError | None:
    """An S3AccessError naming endpoint and bucket if `exc` is an auth or missing-bucket error, or (once the
    retries are `exhausted`) a connection failure."""
    endpoint = endpoint or os.environ.get("S3_ENDPOINT_URL", "") or "the S3 endpoint"
    if isinstance(exc, S3Error) and exc.code in FATAL_CODES:
        return S3AccessError(f"S3 at {endpoint} refused bucket {bucket!r}: {FATAL_CODES[exc.code]} ({exc.code}); "
                             f"{WHAT_TO_DO[exc.code]}")
    if exhausted and _unreachable(exc):
        return S3AccessError(f"S3 at {endpoint} is unreachable (bucket {bucket!r}: {connection_reason(exc)}); "
                             "check S3_ENDPOINT_URL and that the server is up (locally: `tlpipe stack status`)")
    return None


def retry(
    fn: Callable[[], T],
    *,
    what: str,
    endpoint: str = "",
    bucket: str = "",
    attempts: int = 6,
    base_delay: float = 0.2,
) -> T:
    """Call `fn`, retrying transient S3 faults with jittered exponential backoff.

    Auth and missing-bucket errors raise S3AccessError at once, an endpoint unreachable on the last attempt
    too; anything else non-transient is re-raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            fatal = explain(exc, endpoint, bucket, exhausted=attempt == attempts or not _is_transient(exc))
            if fatal is not None:
                raise fatal from exc
            if not _is_transient(exc) or attempt == attempts:
                raise
            delay = base_delay * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning("%s: transient error (%s), retry %d/%d in %.1fs", what, type(exc).__name__, attempt,
                        attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def safe_relative_path(key: str) -> PurePosixPath:
    """A relative path for an object key that cannot escape a local folder (no `..`, no absolute)."""
    parts = [p for p in PurePosixPath(key).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"object key {key!r} cannot be mapped to a local path safely")
    return PurePosixPath(*parts)


def ensure_bucket(s3: Minio, bucket: str) -> None:
    """Create `bucket` if it does not exist."""
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)


def read_object(s3: Minio, bucket: str, key: str, endpoint: str = "") -> bytes:
    """The bytes of one object, with transient faults retried (connection released either way)."""

    def get() -> bytes:
        response = s3.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    return retry(get, what=f"read s3://{bucket}/{key}", endpoint=endpoint, bucket=bucket)


def upload_file(s3: Minio, path: str | os.PathLike, uri: str) -> None:
    bucket, key = split_uri(uri)
    retry(lambda: s3.fput_object(bucket, key, str(path)), what=f"upload {uri}", bucket=bucket)


def download_file(s3: Minio, uri: str, path: str | os.PathLike) -> Path:
    bucket, key = split_uri(uri)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    retry(lambda: s3.fget_object(bucket, key, str(path)), what=f"download {uri}", bucket=bucket)
    return path


def iter_keys(s3: Minio, uri: str) -> Iterator[str]:
    """Every object key under the prefix of `uri` (paginated by the SDK)."""
    bucket, prefix = split_uri(uri)
    try:
        for obj in s3.list_objects(bucket, prefix=prefix, recursive=True):
            if not obj.is_dir:
                yield obj.object_name
    except Exception as exc:
        fatal = explain(exc, "", bucket, exhausted=True)
        if fatal is not None:
            raise fatal from exc
        raise


def upload_dir(s3: Minio, folder: str | os.PathLike, uri: str) -> int:
    """Upload every file under `folder` to the prefix `uri`; returns the number of files."""
    folder = Path(folder)
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        upload_file(s3, path, f"{uri.rstrip('/')}/{path.relative_to(folder).as_posix()}")
        count += 1
    return count


def download_dir(s3: Minio, uri: str, folder: str | os.PathLike) -> int:
    """Download every object under the prefix `uri` into `folder`; returns the number of files."""
    bucket, prefix = split_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    count = 0
    for key in iter_keys(s3, uri):
        download_file(s3, join_uri(bucket, key), Path(folder) / safe_relative_path(key[len(prefix) :]))
        count += 1
    return count
