"""Connection settings, read from the environment only (docs/DESIGN.md, "Connections").

Locally the variables come from the embedded stack's env file; in the cluster they come from a
Kubernetes Secret injected with kfp-kubernetes. They never appear in code, YAML, logs or params.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

S3_ENV_VARS = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_ENV_VARS = ("MLFLOW_TRACKING_URI",)
ALL_ENV_VARS = (*S3_ENV_VARS, "AWS_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
DEFAULT_REGION = "us-east-1"
# The Kubernetes Secret that holds these variables (keys = the variable names) for the pipeline's steps and
# the Spark driver/executors; manifests/ creates it.
CREDENTIALS_SECRET = "tlpipe-credentials"


class MissingSettingError(RuntimeError):
    """A connection setting that must come from the environment is not set."""


def _require(env: Mapping[str, str], name: str, purpose: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise MissingSettingError(
            f"environment variable {name} is not set ({purpose}); locally run `tlpipe stack up` and "
            f"`source .tlpipe/stack.env`, in the cluster mount the credentials Secret"
        )
    return value


@dataclass(frozen=True)
class S3Settings:
    """Where the S3-compatible store is and how to sign requests to it."""

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = DEFAULT_REGION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        endpoint = _require(env, "S3_ENDPOINT_URL", "S3 endpoint, e.g. http://127.0.0.1:8333")
        if urlparse(endpoint).scheme not in ("http", "https"):
            raise MissingSettingError(f"S3_ENDPOINT_URL must start with http:// or https://, got {endpoint!r}")
        return cls(
            endpoint_url=endpoint.rstrip("/"),
            access_key=_require(env, "AWS_ACCESS_KEY_ID", "S3 access key"),
            secret_key=_require(env, "AWS_SECRET_ACCESS_KEY", "S3 secret key"),
            region=env.get("AWS_REGION", "").strip() or DEFAULT_REGION,
        )

    @property
    def host(self) -> str:
        """host:port, as the minio SDK wants it."""
        return urlparse(self.endpoint_url).netloc

    @property
    def secure(self) -> bool:
        return urlparse(self.endpoint_url).scheme == "https"


def mlflow_tracking_uri(env: Mapping[str, str] | None = None) -> str:
    """The MLflow tracking server URI from MLFLOW_TRACKING_URI."""
    env = os.environ if env is None else env
    return _require(env, "MLFLOW_TRACKING_URI", "MLflow tracking server, e.g. http://127.0.0.1:5000")
