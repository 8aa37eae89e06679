"""`tlpipe serve`: a prediction page and a KServe V2 JSON endpoint for one model, on 127.0.0.1.

No authentication: meant for local use. Binding another --host exposes the model to that network.
"""

from __future__ import annotations

import argparse

from tlpipe.serving import params


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from tlpipe.serving import app, predict

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    classifier = predict.load(args.model, args.tflite_variant if args.tflite else None)
    info = classifier.info
    print(f"tlpipe serve: {info.name} version {info.version or '-'} {' '.join('@' + a for a in info.aliases)} "
          f"({info.form}) on http://{args.host}:{args.port}/ (no authentication: local use only; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app.build_app(classifier, args.top_k), host=args.host, port=args.port, log_level="warning")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`tlpipe serve`."""
    parser = sub.add_parser("serve", help="a local prediction page + KServe V2 JSON endpoint (no authentication)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=params.DEFAULT_MODEL,
                        help="models:/<name>@<alias>, models:/<name>/<version>, or a model folder")
    parser.add_argument("--tflite", action="store_true", help="answer with the version's TFLite export")
    parser.add_argument("--tflite-variant", default=params.TFLITE_VARIANTS[0], choices=params.TFLITE_VARIANTS,
                        help="which TFLite export --tflite uses")
    parser.add_argument("--host", default=params.HOST,
                        help="address to bind; anything but 127.0.0.1 exposes an unauthenticated endpoint")
    parser.add_argument("--port", type=int, default=params.PORT, help="port to listen on")
    parser.add_argument("--top-k", type=int, default=params.TOP_K, help="classes shown per photo")
    parser.set_defaults(func=_run)
