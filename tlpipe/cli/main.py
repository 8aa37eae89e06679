"""`tlpipe`: one command-line entry point; each command group lives next to the code it drives.

Errors: a user error (bad parameter, missing file, refused credentials, unreachable server) prints one line
`tlpipe: error: <message>` and exits 2; a failed pipeline run exits 1; Ctrl-C exits 130 quietly. No traceback unless
`--debug` or TLPIPE_DEBUG=1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tlpipe.components.common.log import debug_enabled

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
    "tlpipe.cli.deploy",
    "tlpipe.cli.preprocess",
    "tlpipe.cli.train",
    "tlpipe.cli.tune",
    "tlpipe.cli.predict",
    "tlpipe.cli.serve",
)
USER_ERROR = 2
# Library errors that are the user's to fix, by "module.Class"; checked only when that module is loaded.
LIBRARY_USER_ERRORS = (
    "minio.error.S3Error",
    "urllib3.exceptions.HTTPError",
    "botocore.exceptions.BotoCoreError",
    "botocore.exceptions.ClientError",
    "mlflow.exceptions.MlflowException",
    "kfp_server_api.exceptions.ApiException",
)
MAX_MESSAGE = 400


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows each option's default, unless it is empty, the option is a flag or the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.nargs != 0 and action.default not in (None, "", argparse.SUPPRESS, [])
                and "%(default)" not in text and "(default" not in text):
            text += " (default: %(default)s)"
        return text


class _RawDefaultsFormatter(_DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """The same, keeping the description's line breaks."""


class Parser(argparse.ArgumentParser):
    """Every parser of the tree shows defaults (sub-parsers inherit this class)."""

    def __init__(self, *args, formatter_class=argparse.HelpFormatter, **kwargs):
        raw = issubclass(formatter_class, argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, formatter_class=_RawDefaultsFormatter if raw else _DefaultsFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tlpipe",
        description="Transfer-learning image classifier on Kubeflow Pipelines: local stack, components, pipeline.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also TLPIPE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def _is_user_error(exc: BaseException) -> bool:
    """The project's own errors, bad values, files, permissions, connections and the servers' refusals."""
    if isinstance(exc, ValueError | OSError):
        return True
    if any(cls.__module__.startswith("tlpipe.") for cls in type(exc).__mro__):
        return True
    for qualified in LIBRARY_USER_ERRORS:
        module, _, name = qualified.rpartition(".")
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


def error_line(exc: BaseException) -> str:
    """The message of `exc` in at most two lines and MAX_MESSAGE characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    text = "\n  ".join(lines[:2])
    if len(lines) > 2 or len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE].rstrip() + " [...] (--debug shows all)"
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or debug_enabled()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        return 130
    except Exception as exc:
        if debug:
            raise
        if _is_user_error(exc):
            print(f"tlpipe: error: {error_line(exc)}", file=sys.stderr)
            return getattr(exc, "exit_code", USER_ERROR)
        print(f"tlpipe: error: {type(exc).__name__}: {error_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
