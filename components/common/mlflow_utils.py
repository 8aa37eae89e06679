"""MLflow helpers shared by the stages: reachability check, the pipeline's parent run, nested stage runs.

Layout (docs/DESIGN.md, "MLflow layout"): one experiment (default `fish-classification`); one parent run per
pipeline run, found by its tag `kfp_run_id`; one nested child run per stage (tag `mlflow.parentRunId`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import requests

from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import mlflow_tracking_uri

if TYPE_CHECKING:
    from mlflow import ActiveRun

log = get_logger("mlflow")
DEFAULT_EXPERIMENT = "fish-classification"  # the one owner of the experiment name (mlflow is imported lazily)
PARENT_ROLE_TAG = "tlpipe.role"


class MlflowUnreachableError(RuntimeError):
    """The MLflow tracking server did not answer its health check."""


def connect(tracking_uri: str | None = None, attempts: int = 5, base_delay: float = 1.0) -> str:
    """Point the MLflow client at the tracking server and check it answers, with backoff.

    Raises MlflowUnreachableError naming the server after `attempts` failed health checks.
    """
    uri = tracking_uri or mlflow_tracking_uri()
    if uri.startswith(("http://", "https://")):
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
                break
            except requests.RequestException as exc:
                last = exc
                if attempt < attempts:
                    delay = base_delay * 2 ** (attempt - 1)
                    log.warning("MLflow at %s not answering (%s); retry in %.0fs", uri, type(exc).__name__, delay)
                    time.sleep(delay)
        else:
            raise MlflowUnreachableError(f"MLflow tracking server at {uri} is unreachable after {attempts} "
                                         f"attempts: {last}")
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


def current_kfp_run_id(explicit: str = "") -> str:
    """The pipeline run id: `explicit` if given, else $KFP_RUN_ID, else "local".

    The pipeline does not pass the run id as a step parameter (that would make every run a cache miss):
    in the cluster it reaches the step as $KFP_RUN_ID from the pod label `pipeline/runid` (downward API);
    `tlpipe local` sets it for its steps.
    """
    if explicit and explicit != "local":
        return explicit
    return os.environ.get("KFP_RUN_ID") or "local"


def experiment_id(name: str = DEFAULT_EXPERIMENT) -> str:
    """Id of the experiment `name`, created when missing."""
    from mlflow.tracking import MlflowClient

    exp = MlflowClient().get_experiment_by_name(name)
    return exp.experiment_id if exp else MlflowClient().create_experiment(name)


def parent_run_id(kfp_run_id: str = "", experiment: str = DEFAULT_EXPERIMENT) -> str:
    """The parent MLflow run of pipeline run `kfp_run_id` (see current_kfp_run_id), created on first use."""
    from mlflow.tracking import MlflowClient

    kfp_run_id = current_kfp_run_id(kfp_run_id)
    client = MlflowClient()
    exp_id = experiment_id(experiment)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.kfp_run_id = '{kfp_run_id}' and tags.`{PARENT_ROLE_TAG}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=f"pipeline-{kfp_run_id}",
                            tags={"kfp_run_id": kfp_run_id, PARENT_ROLE_TAG: "pipeline"})
    log.info("created MLflow parent run %s for pipeline run %s", run.info.run_id, kfp_run_id)
    return run.info.run_id


@contextmanager
def stage_run(
    stage: str,
    *,
    kfp_run_id: str,
    experiment: str = DEFAULT_EXPERIMENT,
    tags: dict[str, str] | None = None,
) -> Iterator[ActiveRun]:
    """Start the nested MLflow run of one stage under the pipeline's parent run."""
    import mlflow

    kfp_run_id = current_kfp_run_id(kfp_run_id)
    parent = parent_run_id(kfp_run_id, experiment)
    run_tags = {"mlflow.parentRunId": parent, "kfp_run_id": kfp_run_id, "stage": stage, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=stage, tags=run_tags) as run:
        log.info("MLflow run %s (%s) under parent %s", run.info.run_id, stage, parent)
        yield run


def log_to_parent(kfp_run_id: str, experiment: str = DEFAULT_EXPERIMENT, *, params: dict | None = None,
                  metrics: dict | None = None, tags: dict | None = None) -> str:
    """Log params, metrics and tags on the pipeline's parent run (every step adds what it knows); its id.

    Params are write-once in MLflow: a step logs only the parameters it owns, so two steps never disagree.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    parent = parent_run_id(kfp_run_id, experiment)
    now = int(time.time() * 1000)
    MlflowClient().log_batch(
        parent,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
    return parent
