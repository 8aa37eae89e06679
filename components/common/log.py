"""One logging format for every component, the CLI and the pipeline steps."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


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


def mask(secret: str | None) -> str:
    """Show only enough of a secret to recognise it (first 4 characters)."""
    if not secret:
        return "<unset>"
    return f"{secret[:4]}…({len(secret)} chars)"
