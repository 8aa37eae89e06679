"""Images/s of the preprocess job: Spark at local[1] and local[2] next to a plain single-process Python loop.

All three do the same work on the same generated JPEGs in a real (embedded) S3: fetch, decode, convert,
resize to --size, JPEG-encode, frame as tf.train.Example, write TFRecord shards. The benchmark starts its own
stack in a temporary folder and stops it. Run: `.venv/bin/python -m bench.preprocess [--images 2000]`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import print_table, write_json

CLASSES = ["class_a", "class_b", "class_c", "class_d"]
SPLIT_CYCLE = ["train"] * 7 + ["val", "val", "test"]


def make_images(s3, bucket: str, count: int, folder: Path) -> Path:
    """Upload `count` photo-sized JPEGs (320..640 px sides) and write their manifest; returns its folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tlpipe.components.common.synthetic import class_image

    rng = np.random.default_rng(0)
    dims = rng.integers(320, 641, size=(count, 2))

    def one(i: int) -> dict:
        label = i % len(CLASSES)
        w, h = (int(v) for v in dims[i])
        img = class_image(label, len(CLASSES), seed=i, size=96).resize((w, h))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        key = f"bench/{CLASSES[label]}/img_{i:05d}.jpg"
        s3.put_object(bucket, key, io.BytesIO(data), len(data))
        return {"uri": f"s3://{bucket}/{key}", "label": CLASSES[label], "label_index": label,
                "split": SPLIT_CYCLE[i % len(SPLIT_CYCLE)], "sha256": hashlib.sha256(data).hexdigest(), "phash": "0" * 16,
                "group": str(i), "bytes": len(data), "width": w, "height": h, "format": "JPEG"}

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(count)))
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows).cast(pa.schema([
        ("uri", pa.string()), ("label", pa.string()), ("label_index", pa.int32()), ("split", pa.string()),
        ("sha256", pa.string()), ("phash", pa.string()), ("group", pa.string()), ("bytes", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string())]))
    pq.write_table(table, folder / "manifest.parquet")
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES,
                                                     "class_to_index": {c: i for i, c in enumerate(CLASSES)}}))
    return folder


def python_loop(manifest: Path, out: Path, size: int) -> int:
    """The same work without Spark: one process, one object after another."""
    from tlpipe.components.common import examples, images
    from tlpipe.components.common import manifest as manifest_artifact
    from tlpipe.components.common import s3 as s3lib
    from tlpipe.components.preprocess.params import PreprocessParams

    df, _, _ = manifest_artifact.read(str(manifest))
    s3 = s3lib.client()
    for split in examples.SPLITS:
        part = df[df["split"] == split].sort_values("sha256")

        def records(part=part):
            for uri, label, sha in zip(part["uri"], part["label_index"], part["sha256"], strict=True):
                bucket, key = s3lib.split_uri(uri)
                response = s3.get_object(bucket, key)
                data = response.read()
                response.close()
                response.release_conn()
                jpeg = images.process(data, size, PreprocessParams.resize_mode, PreprocessParams.jpeg_quality)
                yield examples.encode_example(jpeg, int(label), sha.encode())

        examples.write_tfrecord(out / split / examples.shard_name(0), records())
    return len(df)


def spark_run(manifest: Path, out: Path, size: int, master: str) -> tuple[float, float]:
    """(session start seconds, job seconds) of the Spark job at `master`, in a fresh process (cold JVM)."""
    code = (f"import json; from bench.preprocess import _spark_child; "
            f"print(json.dumps(_spark_child({str(manifest)!r}, {str(out)!r}, {size}, {master!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    if proc.returncode:
        raise RuntimeError(f"Spark run at {master} failed:\n{proc.stderr[-3000:]}")
    session, seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    return session, seconds


def _spark_child(manifest: str, out: str, size: int, master: str) -> tuple[float, float]:
    from pyspark.sql import SparkSession

    from tlpipe.components.preprocess import job

    started = time.perf_counter()
    spark = (SparkSession.builder.master(master).appName("bench-preprocess").config("spark.driver.memory", "1g")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    spark.sparkContext.parallelize(range(8), 8).count()  # Python workers started
    session = time.perf_counter() - started
    try:
        started = time.perf_counter()
        job.run(spark, job.JobConfig(manifest=manifest, output=out, image_size=size))
        return session, time.perf_counter() - started
    finally:
        spark.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="number of generated source images (default 2000)")
    parser.add_argument("--size", type=int, default=224, help="output side in pixels (default 224)")
    args = parser.parse_args(argv)

    from tlpipe.components.common import s3 as s3lib
    from tlpipe.stack import Stack

    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        tmp = Path(tmp)
        stack = Stack(tmp / "stack")
        stack.up()
        try:
            stack.apply_env(override=True)
            s3 = s3lib.client(max_connections=8)
            s3lib.ensure_bucket(s3, "bench")
            print(f"generating and uploading {args.images} JPEGs (320-640 px) ...", flush=True)
            manifest = make_images(s3, "bench", args.images, tmp / "manifest")
            rows = []
            started = time.perf_counter()
            python_loop(manifest, tmp / "out-python", args.size)
            seconds = time.perf_counter() - started
            rows.append({"runner": "python loop (1 process)", "images": args.images, "job_s": seconds,
                         "images_per_s": args.images / seconds, "session_start_s": 0.0})
            for master in ("local[1]", "local[2]"):
                session, seconds = spark_run(manifest, tmp / f"out-{master}", args.size, master)
                rows.append({"runner": f"spark {master}", "images": args.images, "job_s": seconds,
                             "images_per_s": args.images / seconds, "session_start_s": session})
        finally:
            stack.down(grace=5)
    print_table(rows)
    write_json("preprocess", rows, image_size=args.size, source="JPEG 320-640 px in embedded S3 (SeaweedFS)",
               note="job_s excludes the SparkSession start (session_start_s, a cold JVM in a fresh process)")


if __name__ == "__main__":
    main()
