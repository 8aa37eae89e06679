"""The preprocess step: run the Spark job (job.py) on a backend and return the schema of what it wrote.

Backends: `local` (a SparkSession in this process, `master` e.g. local[*]), `dataproc` (Yandex Data Proc,
dataproc.py) and `k8s` (Kubeflow Spark Operator, k8s.py). Remote backends need s3:// manifest and output.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from components.common import s3 as s3lib
from components.common.examples import SCHEMA_FILE
from components.common.log import get_logger
from components.preprocess import job

log = get_logger("preprocess")

BACKENDS = ("local", "dataproc", "k8s")
LOCAL_OPTIONS = {
    "driver_memory": "JVM heap of the local driver (= executors in local mode), default 1g",
    "ui": "start the Spark web UI (default false)",
    "partitions": "decode partitions, 0 = automatic (default)",
    "conf": "extra Spark settings, {key: value}",
}


def check_options(options: dict, known: dict, backend: str) -> dict:
    """Reject unknown option keys with the list of known ones."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown spark_options for backend {backend!r}: {unknown}; known: {sorted(known)}")
    return options


@contextmanager
def local_session(master: str = "local[*]", driver_memory: str = "1g", ui: bool = False,
                  conf: dict | None = None) -> Iterator:
    """A SparkSession on this machine; an already active session is reused (and left running)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        log.info("using the active SparkSession (%s)", active.sparkContext.master)
        yield active
        return
    builder = (SparkSession.builder.master(master).appName("tlpipe-preprocess")
               .config("spark.driver.memory", driver_memory).config("spark.ui.enabled", str(bool(ui)).lower())
               .config("spark.ui.showConsoleProgress", "false"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers use this interpreter (its venv)
    log.info("starting SparkSession %s (driver memory %s)", master, driver_memory)
    spark = builder.getOrCreate()
    try:
        job.ship_package(spark)
        yield spark
    finally:
        spark.stop()


def preprocess(manifest: str, output: str, image_size: int = 224, resize_mode: str = "squash",
               num_shards: int = 0, max_bad_fraction: float = 0.05, backend: str = "local",
               master: str = "local[*]", options: dict | None = None, jpeg_quality: int = 95) -> dict:
    """Manifest artifact -> examples artifact at `output`; returns its schema.json as a dict."""
    options = dict(options or {})
    if backend not in BACKENDS:
        raise ValueError(f"spark_backend must be one of {BACKENDS}, got {backend!r}")
    config = job.JobConfig(manifest=str(manifest), output=str(output), image_size=image_size,
                           resize_mode=resize_mode, num_shards=num_shards, max_bad_fraction=max_bad_fraction,
                           jpeg_quality=jpeg_quality, partitions=int(options.pop("partitions", 0) or 0))
    config.validate()
    if backend == "local":
        check_options(options, LOCAL_OPTIONS, backend)
        with local_session(master, str(options.get("driver_memory", "1g")), bool(options.get("ui", False)),
                           options.get("conf")) as spark:
            return job.run(spark, config)
    for name, uri in (("manifest", config.manifest), ("output", config.output)):
        if not s3lib.is_s3_uri(uri):
            raise ValueError(f"spark_backend {backend!r} runs on a remote cluster: {name} must be an s3:// URI, "
                             f"got {uri!r}")
    if backend == "dataproc":
        from components.preprocess import dataproc

        dataproc.run_job(config, dataproc.DataprocOptions.from_dict(options))
    else:
        from components.preprocess import k8s

        k8s.run_job(config, k8s.K8sOptions.from_dict(options))
    return json.loads(job.read_bytes(f"{config.output.rstrip('/')}/{SCHEMA_FILE}"))
