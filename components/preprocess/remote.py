"""What both remote backends share: job arguments, staging the job's code in S3, S3 settings for the cluster."""

from __future__ import annotations

import hashlib
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.settings import S3Settings
from tlpipe.components.preprocess import job

JOB_FILE = Path(__file__).with_name("preprocess_job.py")
S3_ENV = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def job_arguments(config: job.JobConfig) -> list[str]:
    """The command line of preprocess_job.py for `config`."""
    return ["--manifest", config.manifest, "--output", config.output, "--image-size", str(config.image_size),
            "--resize-mode", config.resize_mode, "--num-shards", str(config.num_shards),
            "--max-bad-fraction", str(config.max_bad_fraction), "--jpeg-quality", str(config.jpeg_quality),
            "--partitions", str(config.partitions)]


def stage_code(staging_uri: str) -> tuple[str, str]:
    """Upload preprocess_job.py and a zip of `components` under `staging_uri/<content hash>/`; returns their URIs."""
    s3 = s3lib.client()
    with tempfile.TemporaryDirectory(prefix="tlpipe-stage-") as tmp:
        package = job.package_zip(tmp)
        digest = hashlib.sha256(JOB_FILE.read_bytes() + package.read_bytes()).hexdigest()[:16]
        base = f"{staging_uri.rstrip('/')}/{digest}"
        main_uri, zip_uri = f"{base}/{JOB_FILE.name}", f"{base}/{package.name}"
        s3lib.upload_file(s3, JOB_FILE, main_uri)
        s3lib.upload_file(s3, package, zip_uri)
    return main_uri, zip_uri


def default_staging(output: str) -> str:
    bucket, _ = s3lib.split_uri(output)
    return f"s3://{bucket}/tlpipe-staging/preprocess"


def s3_env() -> dict[str, str]:
    """The S3 connection variables the driver and executors need (validated; never logged)."""
    settings = S3Settings.from_env()
    return {"S3_ENDPOINT_URL": settings.endpoint_url, "AWS_ACCESS_KEY_ID": settings.access_key,
            "AWS_SECRET_ACCESS_KEY": settings.secret_key, "AWS_REGION": settings.region}


def _exit_on_sigterm(signum, frame):
    raise SystemExit(f"terminated by signal {signum}")


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM (how KFP cancels a step) into SystemExit, so `finally` blocks clean up remote resources."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
