"""The preprocess step: run the Spark job (job.py) on a backend and return the schema of what it wrote.

Backends (`spark_backend`): `local` (a SparkSession in this process at `spark_master`, e.g. local[*]),
`dataproc` (Yandex Data Proc, dataproc.py) and `k8s` (Kubeflow Spark Operator, k8s.py, running
`spark_image`). Remote backends need s3:// manifest and output. Defaults: params.py.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tlpipe.components.common import mlflow_utils
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.examples import SCHEMA_FILE
from tlpipe.components.common.log import get_logger
from tlpipe.components.preprocess import job
from tlpipe.components.preprocess.params import PreprocessParams, check_backend, check_options

log = get_logger("preprocess")

LOCAL_OPTIONS = {
    "driver_memory": "JVM heap of the local driver (= executors in local mode), default 1g",
    "ui": "start the Spark web UI (default false)",
    "partitions": "decode partitions, 0 = automatic (default)",
    "conf": "extra Spark settings, {key: value}",
}
SECRET_NAME = re.compile(r"secret|password|token|credential|key", re.IGNORECASE)  # spark_options not logged as is


@contextmanager
def local_session(master: str = PreprocessParams.spark_master, driver_memory: str = "1g", ui: bool = False,
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


def preprocess(manifest: str, output: str, image_size: int = PreprocessParams.image_size,
               resize_mode: str = PreprocessParams.resize_mode, num_shards: int = PreprocessParams.num_shards,
               max_bad_fraction: float = PreprocessParams.max_bad_fraction,
               spark_backend: str = PreprocessParams.spark_backend,
               spark_master: str = PreprocessParams.spark_master, spark_options: dict | None = None,
               jpeg_quality: int = PreprocessParams.jpeg_quality,
               spark_image: str = PreprocessParams.spark_image,
               experiment: str = mlflow_utils.DEFAULT_EXPERIMENT) -> dict:
    """Manifest artifact -> examples artifact at `output`; returns its schema.json as a dict.

    In a pipeline run with MLflow configured, the params go on the pipeline's parent run in `experiment`.
    """
    options = dict(spark_options or {})
    backend = check_backend(spark_backend)
    config = job.JobConfig(manifest=str(manifest), output=str(output), image_size=image_size,
                           resize_mode=resize_mode, num_shards=num_shards, max_bad_fraction=max_bad_fraction,
                           jpeg_quality=jpeg_quality, partitions=int(options.pop("partitions", 0) or 0))
    config.validate()
    if mlflow_utils.connect_step("preprocess"):
        mlflow_utils.log_to_parent("", experiment, params={
            "image_size": image_size, "resize_mode": resize_mode, "spark_backend": backend,
            "spark_options": json.dumps(_redacted(spark_options or {}), sort_keys=True),
            "preprocess.num_shards": num_shards, "preprocess.max_bad_fraction": max_bad_fraction,
            "preprocess.jpeg_quality": jpeg_quality})
    if backend == "local":
        check_options(options, LOCAL_OPTIONS, backend)
        with local_session(spark_master, str(options.get("driver_memory", "1g")),
                           bool(options.get("ui", False)), options.get("conf")) as spark:
            return job.run(spark, config)
    for name, uri in (("manifest", config.manifest), ("output", config.output)):
        if not s3lib.is_s3_uri(uri):
            raise ValueError(f"spark_backend {backend!r} runs on a remote cluster: {name} must be an s3:// URI, "
                             f"got {uri!r}")
    if backend == "dataproc":
        from tlpipe.components.preprocess import dataproc

        dataproc.run_job(config, dataproc.DataprocOptions.from_dict(options))
    else:
        from tlpipe.components.preprocess import k8s

        k8s.run_job(config, k8s.K8sOptions.from_dict(options, spark_image))
    return json.loads(job.read_bytes(f"{config.output.rstrip('/')}/{SCHEMA_FILE}"))


def _redacted(options: dict) -> dict:
    """spark_options with the values of secret-looking keys (at any depth, e.g. in `conf`) as ***."""
    return {k: "***" if SECRET_NAME.search(str(k)) else _redacted(v) if isinstance(v, dict) else v
            for k, v in options.items()}
