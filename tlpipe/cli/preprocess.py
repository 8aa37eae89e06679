"""`tlpipe preprocess`: run the preprocess step from the command line (local Spark or a remote backend)."""

from __future__ import annotations

import argparse
import json

from tlpipe.components.preprocess.params import BACKENDS, RESIZE_MODES, PreprocessParams


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess", help="manifest -> TFRecord examples with Spark (local, Data Proc or k8s)",
        description="Decode, convert to RGB and resize the images of an ingest manifest and write the "
                    "`examples` artifact (TFRecord shards per split + schema.json). S3 connection from the "
                    "environment.")
    p.add_argument("--manifest", required=True, help="manifest artifact directory (path or s3://)")
    p.add_argument("--out", required=True, help="examples artifact directory (path or s3://)")
    p.add_argument("--image-size", type=int, default=PreprocessParams.image_size,
                   help="output side in pixels (default %(default)s)")
    p.add_argument("--resize-mode", default=PreprocessParams.resize_mode, choices=RESIZE_MODES, help="how an image becomes a square")
    p.add_argument("--num-shards", type=int, default=PreprocessParams.num_shards,
                   help="total shards, 0 = automatic (~150 MB each)")
    p.add_argument("--max-bad-fraction", type=float, default=PreprocessParams.max_bad_fraction,
                   help="fail above this fraction of bad images")
    p.add_argument("--jpeg-quality", type=int, default=PreprocessParams.jpeg_quality,
                   help="JPEG quality of the stored examples")
    p.add_argument("--spark-backend", default=PreprocessParams.spark_backend, choices=BACKENDS,
                   help="where the Spark job runs")
    p.add_argument("--spark-master", default=PreprocessParams.spark_master,
                   help="Spark master of the local backend (default %(default)s)")
    p.add_argument("--spark-options", type=json.loads, default=PreprocessParams().spark_options,
                   help="backend options as JSON (keys: components/preprocess/README.md)")
    p.add_argument("--spark-image", default=PreprocessParams.spark_image,
                   help="image of the k8s backend's SparkApplication (unless --spark-options set `image`)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tlpipe.components.preprocess.core import preprocess

    schema = preprocess(args.manifest, args.out, image_size=args.image_size, resize_mode=args.resize_mode,
                        num_shards=args.num_shards, max_bad_fraction=args.max_bad_fraction,
                        spark_backend=args.spark_backend, spark_master=args.spark_master,
                        spark_options=args.spark_options, jpeg_quality=args.jpeg_quality,
                        spark_image=args.spark_image)
    print(json.dumps({k: schema[k] for k in ("num_examples", "num_shards", "image_size")}
                     | {"bad_images": schema["bad_images"]["count"]}))
    return 0
