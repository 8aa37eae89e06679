"""`tlpipe stack up|down|status`: the embedded local S3 (SeaweedFS) + MLflow servers (tlpipe.stack)."""

from __future__ import annotations

import argparse

from tlpipe.components.common.log import mask
from tlpipe.stack import DATA_BUCKET, Stack, StackError


def _cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(args.state_dir)
    stack.up(timeout=args.timeout)
    return _cmd_status(args)


def _cmd_down(args: argparse.Namespace) -> int:
    Stack(args.state_dir).down()
    print("stack stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    stack = Stack(args.state_dir)
    rows = stack.status()
    if not rows:
        print(f"stack is down (state folder {stack.state_dir})")
        return 1
    for row in rows:
        state = "healthy" if row["healthy"] else ("running, NOT answering" if row["running"] else "stopped")
        print(f"{row['server']:<7} {state:<22} {row['url']:<28} pid {row['pid']:<8} log {row['log']}")
    try:
        env = stack.env()
        print(f"S3 access key {env['AWS_ACCESS_KEY_ID']}, secret {mask(env['AWS_SECRET_ACCESS_KEY'])}; "
              f"data bucket s3://{DATA_BUCKET}/")
        print(f"connection variables: source {stack.env_file}")
    except StackError:
        pass
    return 0 if all(r["healthy"] for r in rows) else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`tlpipe stack up|down|status`."""
    parser = sub.add_parser("stack", help="embedded local S3 (SeaweedFS) + MLflow servers",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=None, help="state folder (default $TLPIPE_HOME or ./.tlpipe)")
    actions = parser.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start both servers (reuses running ones) and print their status")
    up.add_argument("--timeout", type=float, default=120, help="seconds to wait for each server to answer")
    up.set_defaults(func=_cmd_up)
    actions.add_parser("down", help="stop both servers by PID").set_defaults(func=_cmd_down)
    actions.add_parser("status", help="show URLs, PIDs and health (exit 1 unless both healthy)").set_defaults(
        func=_cmd_status)
