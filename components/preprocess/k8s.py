"""spark-on-k8s backend: a `SparkApplication` (Kubeflow Spark Operator, sparkoperator.k8s.io/v1beta2).

The application runs preprocess_job.py (`main_application_file`, a local:// path) from the Spark image: the
step's `spark_image` (the pipeline passes its compiled `spark` image), unless spark_options set `image`.
Driver and executors get the S3 connection from the credentials Secret (envFrom), never from the manifest.
The object is validated against the operator's published models (kubeflow-spark-api) before it is created,
then polled until COMPLETED or FAILED.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, fields

from tlpipe.components.common import kube
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import CREDENTIALS_SECRET
from tlpipe.components.preprocess import job, remote
from tlpipe.components.preprocess.params import check_options

log = get_logger("preprocess.k8s")

GROUP, VERSION, PLURAL = "sparkoperator.k8s.io", "v1beta2", "sparkapplications"
DONE_STATES = {"COMPLETED"}
FAILED_STATES = {"FAILED", "SUBMISSION_FAILED"}


class K8sJobError(RuntimeError):
    """The SparkApplication failed, was rejected, or did not finish in time."""


class K8sTimeoutError(K8sJobError):
    """The SparkApplication did not reach a final state within `timeout_s`."""


@dataclass(frozen=True)
class K8sOptions:
    """spark_options of the `k8s` backend (every key documented in components/preprocess/README.md)."""

    namespace: str = "tlpipe"  # the Spark namespace of manifests/ (RBAC lets the step manage apps only there)
    service_account: str = "spark-driver"  # driver's account (manifests/): may create executor pods
    image: str = ""  # required: from_dict falls back to the step's spark_image
    image_pull_policy: str = "IfNotPresent"
    # where docker/spark installs the project (non-editable, into /opt/venv)
    main_application_file: str = (
        "local:///opt/venv/lib/python3.11/site-packages/tlpipe/components/preprocess/preprocess_job.py")
    credentials_secret: str = ""  # default: common.settings.CREDENTIALS_SECRET
    spark_version: str = ""  # default: the installed pyspark's version
    driver_cores: int = 1
    driver_memory: str = "1g"
    executor_instances: int = 2
    executor_cores: int = 2
    executor_memory: str = "2g"
    spark_conf: dict = field(default_factory=dict)
    ttl_seconds: int = 86400  # the operator garbage-collects a finished application (kept or failed) after this
    timeout_s: float = 6 * 3600
    poll_interval_s: float = 10
    keep: bool = False  # keep the SparkApplication after success (it is always kept after a failure)

    def __post_init__(self):
        if not self.image:
            raise ValueError("spark_backend 'k8s' has no Spark image: set the step's spark_image "
                             "(tlpipe preprocess --spark-image) or spark_options 'image'")

    @classmethod
    def from_dict(cls, options: dict, spark_image: str = "") -> K8sOptions:
        """The options of `spark_options`; their `image` wins over the step's `spark_image`."""
        check_options(options, {f.name for f in fields(cls)}, "k8s")
        return cls(**{**options, "image": options.get("image") or spark_image})


def build_application(name: str, config: job.JobConfig, opts: K8sOptions) -> dict:
    """The SparkApplication object for one run, validated against the operator's models."""
    import pyspark

    env_from = [{"secretRef": {"name": opts.credentials_secret or CREDENTIALS_SECRET}}]
    labels = {"app.kubernetes.io/name": "tlpipe", "app.kubernetes.io/component": "preprocess"}
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": labels},
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": opts.image,
            "imagePullPolicy": opts.image_pull_policy,
            "mainApplicationFile": opts.main_application_file,
            "arguments": remote.job_arguments(config),
            "sparkVersion": opts.spark_version or pyspark.__version__,
            "sparkConf": {"spark.ui.showConsoleProgress": "false", **{k: str(v) for k, v in opts.spark_conf.items()}},
            "restartPolicy": {"type": "Never"},
            "timeToLiveSeconds": opts.ttl_seconds,
            "driver": {"cores": opts.driver_cores, "memory": opts.driver_memory,
                       "serviceAccount": opts.service_account, "labels": labels, "envFrom": env_from},
            "executor": {"instances": opts.executor_instances, "cores": opts.executor_cores,
                         "memory": opts.executor_memory, "labels": labels, "envFrom": env_from},
        },
    }
    validate_application(body)
    return body


def validate_application(body: dict) -> None:
    """Check `body` against kubeflow-spark-api's SparkApplication model; unknown or mistyped fields fail."""
    from kubeflow_spark_api.models import SparkV1beta2SparkApplication

    try:
        parsed = SparkV1beta2SparkApplication.from_dict(body).to_dict()
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise K8sJobError(f"invalid SparkApplication {body.get('metadata', {}).get('name')}: {exc}") from None
    dropped = _dropped_fields(body, parsed)
    if dropped:
        raise K8sJobError(f"SparkApplication fields unknown to {GROUP}/{VERSION}: {dropped}")


def _dropped_fields(given, parsed, path="") -> list[str]:
    if isinstance(given, dict) and isinstance(parsed, dict):
        out = []
        for key, value in given.items():
            if key not in parsed:
                out.append(f"{path}{key}")
            else:
                out += _dropped_fields(value, parsed[key], f"{path}{key}.")
        return out
    if isinstance(given, list) and isinstance(parsed, list):
        return [d for g, p in zip(given, parsed, strict=False) for d in _dropped_fields(g, p, path)]
    return []


def _driver_log_tail(api_client, namespace: str, status: dict, lines: int = 40) -> str:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    pod = (status.get("driverInfo") or {}).get("podName")
    if not pod:
        return ""
    try:
        return client.CoreV1Api(api_client).read_namespaced_pod_log(pod, namespace, tail_lines=lines)
    except ApiException as exc:
        return f"(driver log of pod {pod} unavailable: {exc.status} {exc.reason})"


def wait(api_client, name: str, opts: K8sOptions) -> dict:
    """Poll the SparkApplication until a final state; returns its status, raises K8sJobError unless COMPLETED."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + opts.timeout_s
    last = None
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, opts.namespace, PLURAL, name)
        status = obj.get("status") or {}
        state = (status.get("applicationState") or {}).get("state") or "NEW"
        if state != last:
            log.info("SparkApplication %s/%s: %s", opts.namespace, name, state)
            last = state
        if state in DONE_STATES:
            return status
        if state in FAILED_STATES:
            message = (status.get("applicationState") or {}).get("errorMessage") or "(no error message)"
            tail = _driver_log_tail(api_client, opts.namespace, status)
            raise K8sJobError(f"SparkApplication {opts.namespace}/{name} {state}: {message}"
                              + (f"\nlast driver output:\n{tail}" if tail else ""))
        if time.monotonic() > deadline:
            raise K8sTimeoutError(f"SparkApplication {opts.namespace}/{name} did not finish within "
                              f"{opts.timeout_s:.0f} s (last state {state})")
        time.sleep(opts.poll_interval_s)


def run_job(config: job.JobConfig, opts: K8sOptions, api_client=None) -> None:
    """Create the SparkApplication and wait for it; delete it after success (unless `keep`), a timeout or a
    cancel; keep it after a failure so its driver logs can be read."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api_client = api_client or kube.api_client()
    api = client.CustomObjectsApi(api_client)
    name = f"tlpipe-preprocess-{uuid.uuid4().hex[:8]}"
    body = build_application(name, config, opts)
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, opts.namespace, PLURAL, body)
    except ApiException as exc:
        raise K8sJobError(f"cannot create SparkApplication in namespace {opts.namespace}: {exc.status} "
                          f"{exc.reason}: {exc.body}") from None
    log.info("created SparkApplication %s/%s (image %s)", opts.namespace, name, body["spec"]["image"])
    outcome = "interrupted"
    try:
        with remote.sigterm_unwinds():
            wait(api_client, name, opts)
        outcome = "completed"
    except K8sTimeoutError:
        outcome = "timed out"
        raise
    except K8sJobError:
        outcome = "failed"
        raise
    finally:
        if outcome == "failed" or (outcome == "completed" and opts.keep):
            log.info("keeping SparkApplication %s/%s (%s); the operator removes it after %d s", opts.namespace,
                     name, outcome, opts.ttl_seconds)
        else:  # done, or stopped early (timeout, cancelled step): remove it and its pods
            api.delete_namespaced_custom_object(GROUP, VERSION, opts.namespace, PLURAL, name)
            log.info("deleted SparkApplication %s/%s (%s)", opts.namespace, name, outcome)
