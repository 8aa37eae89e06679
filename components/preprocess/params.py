"""The preprocess step's parameters: the one owner of their defaults and choices (standard library only).

The pipeline, the KFP adapter (literal copies, checked by a test), `tlpipe preprocess`, core.preprocess and
the Spark job's command line (preprocess_job.py) all take their defaults from `PreprocessParams`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

RESIZE_MODES = ("squash", "center-crop", "pad")
BACKENDS = ("local", "dataproc", "k8s")


@dataclass(frozen=True)
class PreprocessParams:
    """Parameters of the preprocess step (docs/DESIGN.md §3), named as in the pipeline and the adapter."""

    image_size: int = 224  # output side in pixels
    resize_mode: str = "squash"  # one of RESIZE_MODES
    num_shards: int = 0  # shards in total, 0 = automatic (~150 MB each)
    max_bad_fraction: float = 0.05  # fail when more images than this fraction cannot be decoded
    jpeg_quality: int = 95  # JPEG quality of the stored images
    spark_backend: str = "local"  # one of BACKENDS
    spark_master: str = "local[*]"  # Spark master of the local backend
    spark_options: dict = field(default_factory=dict)  # backend options (components/preprocess/README.md)
    spark_image: str = ""  # image of the k8s SparkApplication (the pipeline passes its `spark` image)


def check_resize_mode(resize_mode: str) -> str:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    return resize_mode


def check_backend(spark_backend: str) -> str:
    if spark_backend not in BACKENDS:
        raise ValueError(f"spark_backend must be one of {BACKENDS}, got {spark_backend!r}")
    return spark_backend


def check_options(options: dict, known: Iterable[str], backend: str) -> dict:
    """Reject unknown spark_options keys of `backend` with the list of known ones."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown spark_options for backend {backend!r}: {unknown}; known: {sorted(known)}")
    return options
