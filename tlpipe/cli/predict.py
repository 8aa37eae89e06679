"""`tlpipe predict`: classify images, folders or s3:// prefixes with a registered version or a model folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tlpipe.serving import params


def _run(args: argparse.Namespace) -> int:
    from tlpipe.serving import predict

    fmt = args.format or (Path(args.output).suffix.lstrip(".").lower() if args.output else "table")
    if fmt not in params.FORMATS:
        raise ValueError(f"--output {args.output!r}: name a .csv or .json file, or pass --format")
    sources = predict.list_sources(args.inputs)
    classifier = predict.load(args.model, args.tflite_variant if args.tflite else None)
    started = time.perf_counter()
    rows = predict.predict_sources(classifier, sources, args.batch_size, args.top_k, progress=not args.quiet)
    seconds = time.perf_counter() - started
    if args.output:
        with open(args.output, "w", newline="") as stream:
            predict.write(rows, fmt, stream, classifier.info)
    else:
        predict.write(rows, fmt, sys.stdout, classifier.info)
    info = classifier.info
    print(f"{len(rows)} images in {seconds:.2f} s ({1000 * seconds / max(len(rows), 1):.2f} ms/image) by "
          f"{info.name} version {info.version or '-'} {' '.join('@' + a for a in info.aliases)} ({info.form})"
          + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`tlpipe predict`."""
    parser = sub.add_parser("predict", help="classify images with a registered model (label, probability, top-k)",
                            description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE",
                        help="image files, folders (their images, recursively), s3:// objects or prefixes")
    parser.add_argument("--model", "-m", default=params.DEFAULT_MODEL,
                        help="models:/<name>@<alias>, models:/<name>/<version>, or a model folder (an MLflow "
                             "model, or a `model` artifact: prepared with preprocess's default resize)")
    parser.add_argument("--tflite", action="store_true",
                        help="classify with the version's TFLite export instead of the Keras model")
    parser.add_argument("--tflite-variant", default=params.TFLITE_VARIANTS[0], choices=params.TFLITE_VARIANTS,
                        help="which TFLite export --tflite uses")
    parser.add_argument("--top-k", type=int, default=params.TOP_K, help="classes listed per image")
    parser.add_argument("--batch-size", type=int, default=params.BATCH_SIZE, help="images per forward pass")
    parser.add_argument("--output", "-o", default=None, help="write to this .csv or .json file (default: stdout)")
    parser.add_argument("--format", default=None, choices=params.FORMATS,
                        help="output format (default: from --output's suffix, else table)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
