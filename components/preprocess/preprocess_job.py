"""spark-submit entry point of the preprocess step (DESIGN.md §3).

    spark-submit [--py-files tlpipe_components.zip] components/preprocess/preprocess_job.py \
        --manifest s3://bucket/manifest --output s3://bucket/examples --image-size 224 --num-shards 0

The job's code lives in the `components` package. From a checkout, the package beside this file is used
(before any installed copy) and shipped to the executors as a zip at start; on a remote cluster (Data Proc, Kubernetes) the launcher passes that
zip with --py-files / pyFiles. S3 credentials come from the environment of driver and executors
(S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
"""

import argparse
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if (_HERE / "job.py").is_file() and _HERE.parent.name == "components":
    sys.path.insert(0, str(_HERE.parent.parent))  # run from a checkout: use the package beside this file


def parse_args(argv=None):
    from components.preprocess.images import RESIZE_MODES

    p = argparse.ArgumentParser(description="Manifest (DESIGN §2) -> examples artifact (DESIGN §3) with Spark.")
    p.add_argument("--manifest", required=True, help="manifest artifact directory (local path or s3://)")
    p.add_argument("--output", required=True, help="examples artifact directory (local path or s3://)")
    p.add_argument("--image-size", type=int, default=224, help="output side in pixels (default 224)")
    p.add_argument("--resize-mode", choices=RESIZE_MODES, default="squash", help="default squash")
    p.add_argument("--num-shards", type=int, default=0, help="shards in total, 0 = ~150 MB each (default)")
    p.add_argument("--max-bad-fraction", type=float, default=0.05,
                   help="fail when more images than this fraction cannot be decoded (default 0.05)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the stored images (default 95)")
    p.add_argument("--partitions", type=int, default=0, help="decode partitions, 0 = automatic (default)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from pyspark.sql import SparkSession

    from components.common.log import get_logger
    from components.preprocess import job

    args = parse_args(argv)
    config = job.JobConfig(manifest=args.manifest, output=args.output, image_size=args.image_size,
                           resize_mode=args.resize_mode, num_shards=args.num_shards,
                           max_bad_fraction=args.max_bad_fraction, jpeg_quality=args.jpeg_quality,
                           partitions=args.partitions)
    config.validate()
    spark = SparkSession.builder.appName("tlpipe-preprocess").getOrCreate()
    try:
        job.ship_package(spark)
        job.run(spark, config)
    except job.PreprocessError as exc:
        get_logger("preprocess").error("preprocess failed: %s", exc)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
