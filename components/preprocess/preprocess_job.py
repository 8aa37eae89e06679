"""spark-submit entry point of the preprocess step (docs/DESIGN.md §3).

    spark-submit [--py-files tlpipe_components.zip] components/preprocess/preprocess_job.py \
        --manifest s3://bucket/manifest --output s3://bucket/examples --image-size 224 --num-shards 0

The job's code is `tlpipe.components` (installed: the spark image, or `make venv` for a checkout). The
local backend ships it to the executors as a zip at start; on a remote cluster (Data Proc, Kubernetes) the
launcher passes that zip (`job.package_zip`) with --py-files / pyFiles. S3 credentials come from the
environment of driver and executors (S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
"""

import argparse
import sys


def parse_args(argv=None):
    from tlpipe.components.preprocess.job import JobConfig
    from tlpipe.components.preprocess.params import RESIZE_MODES

    p = argparse.ArgumentParser(description="Manifest -> examples (docs/DESIGN.md §2, §3) with Spark.")
    p.add_argument("--manifest", required=True, help="manifest artifact directory (local path or s3://)")
    p.add_argument("--output", required=True, help="examples artifact directory (local path or s3://)")
    p.add_argument("--image-size", type=int, default=JobConfig.image_size,
                   help="output side in pixels (default %(default)s)")
    p.add_argument("--resize-mode", choices=RESIZE_MODES, default=JobConfig.resize_mode,
                   help="default %(default)s")
    p.add_argument("--num-shards", type=int, default=JobConfig.num_shards,
                   help="shards in total, 0 = ~150 MB each (default %(default)s)")
    p.add_argument("--max-bad-fraction", type=float, default=JobConfig.max_bad_fraction,
                   help="fail when more images than this fraction cannot be decoded (default %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=JobConfig.jpeg_quality,
                   help="JPEG quality of the stored images (default %(default)s)")
    p.add_argument("--partitions", type=int, default=JobConfig.partitions,
                   help="decode partitions, 0 = automatic (default %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from pyspark.sql import SparkSession

    from tlpipe.components.common.log import get_logger
    from tlpipe.components.common.manifest import ManifestError
    from tlpipe.components.preprocess import job

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
    except (job.PreprocessError, ManifestError) as exc:
        get_logger("preprocess").error("preprocess failed: %s", exc)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
