"""The defaults of `tlpipe predict` and `tlpipe serve` (standard library only, so `tlpipe --help` stays fast)."""

from __future__ import annotations

from tlpipe.components.register.params import RegisterParams

DEFAULT_MODEL = f"models:/{RegisterParams.registered_model_name}@champion"
TOP_K = 3
BATCH_SIZE = 32
HOST = "127.0.0.1"  # local only: the page has no authentication
PORT = 8765
MAX_REQUEST_BYTES = 20 * 1024 * 1024  # one JSON request to the page's endpoint
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # what a folder's listing keeps
TFLITE_VARIANTS = ("float32", "dynamic_range")  # register's exports (tflite.VARIANTS; a test compares)
FORMATS = ("table", "csv", "json")
