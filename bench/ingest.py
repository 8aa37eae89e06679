"""Ingest throughput: objects/s against the embedded S3 server for several read-pool sizes.

Starts its own stack (SeaweedFS + MLflow) in a temporary folder, uploads N tiny synthetic images
(generated and PUT in parallel), ingests them with each pool size, prints a table, writes
bench/results/ingest.json and stops the stack.

    .venv/bin/python -m bench.ingest --objects 20000 --pools 8,16,32
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import print_table, write_json
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.synthetic import class_image
from tlpipe.components.ingest.core import ingest
from tlpipe.components.ingest.grouping import near_duplicate_pairs
from tlpipe.components.ingest.params import DEFAULT_NEAR_DUPLICATE_DISTANCE
from tlpipe.stack import Stack


def upload_synthetic(s3, bucket: str, prefix: str, objects: int, classes: int, size: int, workers: int) -> float:
    """PUT `objects` PNGs of `size` px spread over `classes` folders; returns the seconds it took."""

    def put(i: int) -> None:
        k = i % classes
        buf = io.BytesIO()
        class_image(k, classes, seed=i, size=size).save(buf, "PNG")
        data = buf.getvalue()
        key = f"{prefix}/class_{k:02d}/img_{i:06d}.png"
        s3lib.retry(lambda: s3.put_object(bucket, key, io.BytesIO(data), len(data)), what=f"put {key}")

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(objects)))
    return time.perf_counter() - started


def time_grouping(n: int = 100_000, distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE) -> float:
    """Seconds to find near-duplicate pairs among `n` random 64-bit hashes (8 variants each): the band index."""
    rng = np.random.default_rng(0)
    variants = rng.integers(0, 2**63, size=(n, 8), dtype=np.int64).astype(np.uint64)
    started = time.perf_counter()
    near_duplicate_pairs(variants.min(axis=1).tolist(), variants.tolist(), distance)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=20_000, help="number of synthetic images")
    parser.add_argument("--pools", default="8,16,32", help="comma-separated read-pool sizes (max_workers)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--upload-workers", type=int, default=32)
    args = parser.parse_args(argv)
    pools = [int(p) for p in args.pools.split(",")]

    with tempfile.TemporaryDirectory(prefix="tlpipe-bench-ingest-") as tmp:
        stack = Stack(Path(tmp) / "stack")
        try:
            stack.up()
            stack.apply_env(override=True)
            s3 = s3lib.client(max_connections=args.upload_workers)
            bucket = "bench-ingest"
            s3.make_bucket(bucket)
            upload_s = upload_synthetic(s3, bucket, "synthetic", args.objects, args.classes, args.size,
                                        args.upload_workers)
            print(f"uploaded {args.objects} objects in {upload_s:.1f}s ({args.objects / upload_s:.0f}/s)")
            rows = []
            for workers in pools:
                started = time.perf_counter()
                result = ingest(f"s3://{bucket}/synthetic", Path(tmp) / f"out-{workers}", max_workers=workers,
                                allow_small_classes=True)
                seconds = time.perf_counter() - started
                rows.append({"pool": workers, "objects": args.objects, "accepted": result.num_images,
                             "groups": result.num_groups, "seconds": round(seconds, 2),
                             "objects_per_s": round(args.objects / seconds, 1)})
        finally:
            stack.down(grace=5)
    print_table(rows)
    grouping_s = time_grouping()
    print(f"near-duplicate search over 100 000 hashes: {grouping_s:.1f}s")
    write_json("ingest", rows, objects=args.objects, image_px=args.size, classes=args.classes,
               upload_seconds=round(upload_s, 2), near_duplicate_search_100k_seconds=round(grouping_s, 2),
               cpus=os.cpu_count())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
