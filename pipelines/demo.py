"""`tlpipe demo`: the README's main job on the embedded defaults."""

from __future__ import annotations

import argparse

from pipelines.stack import Stack


def run_demo(args: argparse.Namespace) -> int:
    """Start (or reuse) the embedded stack and check both servers answer."""
    stack = Stack(args.state_dir)
    stack.up()
    for row in stack.status():
        print(f"{row['server']:<7} {'healthy' if row['healthy'] else 'NOT healthy':<12} {row['url']}")
    return 0 if all(row["healthy"] for row in stack.status()) else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the main job end to end on the embedded local stack")
    parser.add_argument("--state-dir", default=None, help="state folder (default $TLPIPE_HOME or ./.tlpipe)")
    parser.set_defaults(func=run_demo)
