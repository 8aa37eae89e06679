"""The listing fingerprint (ingest's cache key) changes exactly when the data under the prefix changes."""

from __future__ import annotations

import io

from tlpipe.components.ingest.fingerprint import listing_fingerprint


def _put(s3, bucket, key, data: bytes):
    s3.put_object(bucket, key, io.BytesIO(data), len(data))


def test_fingerprint_tracks_the_listing(s3_client, bucket):
    uri = f"s3://{bucket}/data"
    _put(s3_client, bucket, "data/a/1.jpg", b"one")
    _put(s3_client, bucket, "data/b/2.jpg", b"two")
    _put(s3_client, bucket, "elsewhere/x.jpg", b"not under the prefix")
    first = listing_fingerprint(uri)
    assert first.startswith("2:") and listing_fingerprint(uri) == first

    _put(s3_client, bucket, "elsewhere/y.jpg", b"still not under the prefix")
    assert listing_fingerprint(uri) == first
    _put(s3_client, bucket, "data/b/2.jpg", b"TWO")  # rewritten: new ETag
    rewritten = listing_fingerprint(uri)
    assert rewritten != first
    _put(s3_client, bucket, "data/b/2.jpg", b"two")  # same bytes again: same fingerprint
    assert listing_fingerprint(uri) == first
    _put(s3_client, bucket, "data/a/3.jpg", b"three")
    assert listing_fingerprint(uri).startswith("3:")
    s3_client.remove_object(bucket, "data/a/3.jpg")
    assert listing_fingerprint(uri) == first
