"""Ingest throughput: objects/s against the embedded S3 server for several read-pool sizes; with --memory, the
peak memory of ingesting decompression-bomb-like images under several memory budgets.

Starts its own stack (SeaweedFS + MLflow) in a temporary folder, uploads N tiny synthetic images
(generated and PUT in parallel), ingests them with each pool size, prints a table, writes
bench/results/ingest.json and stops the stack.

    .venv/bin/python -m bench.ingest --objects 20000 --pools 8,16,32

--memory uploads --bombs 9400x9400 PNGs (~1.4 MB each on disk, just under max_image_pixels: 3.5 GB of pixels
in all) next to 12 small images, ingests them once per --budgets value (memory_budget_mb) with the default 16
workers, each run in a fresh process, and records that process's peak RSS (VmHWM) in bench/results/ingest_memory.json.

    .venv/bin/python -m bench.ingest --memory --bombs 4 --budgets 512,1024,4096
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.common import print_table, write_json
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.synthetic import class_image
from tlpipe.components.ingest.core import ingest
from tlpipe.components.ingest.grouping import near_duplicate_pairs
from tlpipe.components.ingest.params import DEFAULT_NEAR_DUPLICATE_DISTANCE, IngestParams
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


def bomb_png(seed: int, side: int = 9400) -> bytes:
    """A `side`x`side` RGB PNG of gradients and thin rings: ~1.4 MB on disk, 265 MB of pixels (353 MB in Pillow)."""
    gray = Image.linear_gradient("L").resize((side, side))
    img = Image.merge("RGB", (gray, gray.rotate(90 + seed), Image.radial_gradient("L").resize((side, side))))
    draw = ImageDraw.Draw(img)
    for i in range(40):
        draw.ellipse((i * 200 + seed * 7, i * 150, i * 200 + 1500, i * 150 + 900), outline=(255, i * 6, seed * 40),
                     width=9)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits)."""
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) / 1024


def _ingest_in_child(uri: str, out: str, budget: int, workers: int, answer) -> None:
    baseline = _peak_rss_mb()
    started = time.perf_counter()
    result = ingest(uri, out, max_workers=workers, memory_budget_mb=budget, dedupe="exact", allow_small_classes=True)
    answer.put({"memory_budget_mb": budget, "workers": workers, "images": result.num_images,
                "seconds": round(time.perf_counter() - started, 1), "baseline_rss_mb": round(baseline),
                "peak_rss_mb": round(_peak_rss_mb())})


def memory_bench(args: argparse.Namespace, tmp: Path) -> int:
    """Peak RSS of one ingest of --bombs huge PNGs (+ 12 small ones) per memory budget, each in a fresh process."""
    s3 = s3lib.client()
    bucket = "bench-ingest-memory"
    s3.make_bucket(bucket)
    started = time.perf_counter()
    sizes = []
    for i in range(args.bombs):
        data = bomb_png(i)
        sizes.append(len(data))
        s3.put_object(bucket, f"bombs/class_{i % 2:02d}/bomb_{i}.png", io.BytesIO(data), len(data))
    upload_synthetic(s3, bucket, "bombs", 12, 2, 64, 4)
    print(f"{args.bombs} PNGs of 9400x9400 ({min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f} MB each) generated and "
          f"uploaded in {time.perf_counter() - started:.0f}s")
    spawn = multiprocessing.get_context("spawn")
    rows = []
    for budget in (int(b) for b in args.budgets.split(",")):
        answer = spawn.Queue()
        child = spawn.Process(target=_ingest_in_child,
                              args=(f"s3://{bucket}/bombs", str(tmp / f"out-{budget}"), budget, args.workers, answer))
        child.start()
        rows.append(answer.get())
        child.join()
        print(rows[-1])
    print_table(rows)
    write_json("ingest_memory", rows, bombs=args.bombs, bomb_side=9400, bomb_png_bytes=sizes, cpus=os.cpu_count())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=20_000, help="number of synthetic images")
    parser.add_argument("--pools", default="8,16,32", help="comma-separated read-pool sizes (max_workers)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--upload-workers", type=int, default=32)
    parser.add_argument("--memory", action="store_true", help="run the memory bench instead of the throughput one")
    parser.add_argument("--bombs", type=int, default=4, help="--memory: number of 9400x9400 PNGs")
    parser.add_argument("--budgets", default=f"{IngestParams.memory_budget_mb},1024,4096",
                        help="--memory: comma-separated memory_budget_mb values")
    parser.add_argument("--workers", type=int, default=IngestParams.max_workers, help="--memory: max_workers")
    args = parser.parse_args(argv)
    pools = [int(p) for p in args.pools.split(",")]

    with tempfile.TemporaryDirectory(prefix="tlpipe-bench-ingest-") as tmp:
        stack = Stack(Path(tmp) / "stack")
        try:
            stack.up()
            stack.apply_env(override=True)
            if args.memory:
                return memory_bench(args, Path(tmp))
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
