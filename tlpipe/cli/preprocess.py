"""`tlpipe preprocess`: run the preprocess step from the command line (local Spark or a remote backend)."""

from __future__ import annotations

import argparse
import json


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess", help="manifest -> TFRecord examples with Spark (local, Data Proc or k8s)",
        description="Decode, convert to RGB and resize the images of an ingest manifest and write the `examples` "
                    "artifact (TFRecord shards per split + schema.json). S3 connection from the environment.")
    p.add_argument("--manifest", required=True, help="manifest artifact directory (path or s3://)")
    p.add_argument("--out", required=True, help="examples artifact directory (path or s3://)")
    p.add_argument("--image-size", type=int, default=224, help="output side in pixels (default 224)")
    p.add_argument("--resize-mode", default="squash", choices=("squash", "center-crop", "pad"))
    p.add_argument("--num-shards", type=int, default=0, help="total shards, 0 = automatic (~150 MB each)")
    p.add_argument("--max-bad-fraction", type=float, default=0.05, help="fail above this fraction of bad images")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--backend", default="local", choices=("local", "dataproc", "k8s"))
    p.add_argument("--master", default="local[*]", help="Spark master of the local backend (default local[*])")
    p.add_argument("--options", default="{}", help="backend options as JSON (keys: components/preprocess/README.md)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from components.preprocess.core import preprocess

    schema = preprocess(args.manifest, args.out, image_size=args.image_size, resize_mode=args.resize_mode,
                        num_shards=args.num_shards, max_bad_fraction=args.max_bad_fraction, backend=args.backend,
                        master=args.master, options=json.loads(args.options), jpeg_quality=args.jpeg_quality)
    print(json.dumps({k: schema[k] for k in ("num_examples", "num_shards", "image_size")}
                     | {"bad_images": schema["bad_images"]["count"]}))
    return 0
