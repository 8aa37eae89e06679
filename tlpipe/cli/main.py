"""`tlpipe`: one command-line entry point; each command group lives next to the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines add_commands(subparsers) and imports heavy libraries (TensorFlow, Spark) lazily,
# so `tlpipe --help` stays fast.
COMMAND_MODULES = (
    "tlpipe.cli.stack",
    "tlpipe.cli.demo",
    "tlpipe.cli.local",
    "tlpipe.cli.remote",
    "tlpipe.cli.weights",
    "tlpipe.cli.ingest",
    "tlpipe.cli.models",
    "tlpipe.cli.preprocess",
    "tlpipe.cli.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlpipe",
        description="Transfer-learning image classifier on Kubeflow Pipelines: local stack, components, pipeline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
