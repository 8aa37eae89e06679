"""One logging format for every component, the CLI and the pipeline steps; third-party noise kept out.

Importing this module (every step's core does, before TensorFlow is imported) turns TensorFlow's C++
INFO/WARNING lines and MLflow's artifact progress bars off, and keeps the banner that TensorFlow's C++ library
writes while it loads (before its logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hide it; e.g. "oneDNN custom
operations are on") out of the output unless the import fails; TLPIPE_DEBUG=1 (or the variable set) keeps all.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
DEBUG_ENV = "TLPIPE_DEBUG"


def debug_enabled() -> bool:
    """Whether TLPIPE_DEBUG asks for everything (tracebacks, third-party output)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `tensorflow` once and runs its import inside `output_shown_on_failure`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # as if imported the usual way
        with output_shown_on_failure("import tensorflow"):
            self.loader.exec_module(module)



def get_logger(name: str) -> logging.Logger:
    """Return a logger that writes one timestamped line per message to stderr."""
    root = logging.getLogger("tlpipe")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root.getChild(name)


@contextlib.contextmanager
def output_shown_on_failure(what: str) -> Iterator[None]:
    """Keep what the block writes to stdout/stderr, C++ included (file descriptors 1 and 2), in a temporary
    log that is printed to stderr only if the block raises. TLPIPE_DEBUG=1 lets everything through."""
    if debug_enabled():
        yield
        return
    with tempfile.TemporaryFile() as kept:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(kept.fileno(), 1)
            os.dup2(kept.fileno(), 2)
            python = open(kept.fileno(), "w", closefd=False, errors="replace")  # sys.stdout may not be fd 1
            try:
                with python, contextlib.redirect_stdout(python), contextlib.redirect_stderr(python):
                    yield
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                _unbind_handlers(python)
        except BaseException:
            kept.seek(0)
            text = kept.read().decode(errors="replace")
            if text.strip():
                sys.stderr.write(f"--- output of {what} ---\n{text.rstrip()}\n--- end of the output of {what} ---\n")
                sys.stderr.flush()
            raise
        finally:
            os.close(saved[0])
            os.close(saved[1])


if not debug_enabled():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read once, when TensorFlow's C++ library loads
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def _unbind_handlers(stream) -> None:
    """Point logging handlers made inside the block (TensorFlow's logger binds sys.stderr on first use) back at
    the real stderr, so that they do not write to the block's closed stream later."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for handler in (h for lg in loggers for h in lg.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
            handler.stream = sys.stderr  # not setStream: it would flush the closed stream


def mask(secret: str | None) -> str:
    """Show only enough of a secret to recognise it (first 4 characters)."""
    if not secret:
        return "<unset>"
    return f"{secret[:4]}…({len(secret)} chars)"
