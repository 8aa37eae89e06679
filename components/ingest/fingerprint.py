"""A fingerprint of an S3 listing: the cache key of ingest (cache ingest only while the data is unchanged)."""

from __future__ import annotations

import hashlib

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.settings import S3Settings


def listing_fingerprint(data_uri: str, settings: S3Settings | None = None) -> str:
    """`<count>:<sha256>` over (key, ETag, size) of every object under `data_uri`, in key order.

    Any added, removed, renamed or rewritten object changes it; listing costs one request per 1000 keys
    and reads no object.
    """
    settings = settings or S3Settings.from_env()
    client = s3lib.client(settings)
    bucket, prefix = s3lib.split_uri(data_uri)

    def listing():
        return sorted((o.object_name, o.etag or "", o.size or 0)
                      for o in client.list_objects(bucket, prefix=prefix, recursive=True) if not o.is_dir)

    objects = s3lib.retry(listing, what=f"list {data_uri}", bucket=bucket, endpoint=settings.endpoint_url)
    digest = hashlib.sha256(data_uri.encode())
    for key, etag, size in objects:
        digest.update(f"\0{key}\0{etag}\0{size}".encode())
    return f"{len(objects)}:{digest.hexdigest()}"
