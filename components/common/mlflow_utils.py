"""MLflow helpers shared by the stages: reachability check, the pipeline's parent run, nested stage runs.

Layout (docs/DESIGN.md, "MLflow layout"): one experiment (default `fish-classification`); one parent run per
pipeline run, found by its tag `kfp_run_id`; one nested child run per stage (tag `mlflow.parentRunId`).
Every step puts the pipeline parameters it owns (and ingest the manifest data set) on the parent run.

Closing rule: a stage closes the run it opens (FINISHED, or FAILED on an error, which also marks the parent
FAILED); register, the last step, marks the parent FINISHED. Outside a pipeline run (no run id given and no
$KFP_RUN_ID) there is no parent: a stage's run is a top-level run and nothing is logged on a parent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import mlflow_tracking_uri

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.data.dataset import Dataset
    from mlflow.entities import DatasetInput

log = get_logger("mlflow")
DEFAULT_EXPERIMENT = "fish-classification"  # the one owner of the experiment name (mlflow is imported lazily)
PARENT_ROLE_TAG = "tlpipe.role"
DIGEST_CHARS = 32  # MLflow keeps at most 36 characters of a data set's digest: the sha256's first 32 hex digits


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


def in_pipeline(kfp_run_id: str = "") -> bool:
    """Whether this step belongs to a pipeline run: an explicit run id (not "local") or $KFP_RUN_ID."""
    return current_kfp_run_id(kfp_run_id) != "local"


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
    """Start the MLflow run of one stage: nested under the pipeline's parent run, top-level outside a pipeline.

    The run ends FINISHED, or FAILED when the stage raises; a failure also marks the parent FAILED.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    run_tags = {"stage": stage, **(tags or {})}
    parent = None
    if in_pipeline(kfp_run_id):
        kfp_run_id = current_kfp_run_id(kfp_run_id)
        parent = parent_run_id(kfp_run_id, experiment)
        run_tags |= {"mlflow.parentRunId": parent, "kfp_run_id": kfp_run_id}
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=stage, tags=run_tags) as run:
        log.info("MLflow run %s (%s) %s", run.info.run_id, stage,
                 f"under parent {parent}" if parent else "outside a pipeline run: no parent")
        try:
            yield run
        except BaseException:
            if parent:
                MlflowClient().set_terminated(parent, status="FAILED")
                log.info("MLflow parent run %s marked FAILED: stage %s failed", parent, stage)
            raise


def log_to_parent(kfp_run_id: str, experiment: str = DEFAULT_EXPERIMENT, *, params: dict | None = None,
                  metrics: dict | None = None, tags: dict | None = None,
                  datasets: Sequence[DatasetInput] = ()) -> str | None:
    """Log params, metrics, tags and data sets on the pipeline's parent run (every step adds what it knows).

    Returns the parent's id; None outside a pipeline run (nothing logged). Params are write-once in MLflow: a
    step logs only the parameters it owns; one already there with another value is kept, with a warning.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    if not in_pipeline(kfp_run_id):
        log.info("not in a pipeline run (no kfp_run_id, no $KFP_RUN_ID): no parent run to log on")
        return None
    client = MlflowClient()
    parent = parent_run_id(kfp_run_id, experiment)
    logged = client.get_run(parent).data.params
    new = {}
    for key, value in ((k, str(v)) for k, v in (params or {}).items()):
        if key not in logged:
            new[key] = value
        elif logged[key] != value:
            log.warning("parent run %s already has %s=%r: %r not logged", parent, key, logged[key], value)
    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, v) for k, v in new.items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
    if datasets:
        client.log_inputs(parent, datasets=list(datasets))
    return parent


def connect_step(step: str) -> bool:
    """Connect a step without a run of its own (ingest, preprocess) to MLflow, to log on the parent run.

    False, with an info line, outside a pipeline run ($KFP_RUN_ID unset) or when MLFLOW_TRACKING_URI is not
    set: the standalone CLIs work without MLflow.
    """
    if not in_pipeline():
        log.info("%s: not in a pipeline run ($KFP_RUN_ID unset): nothing logged to MLflow", step)
        return False
    if not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        log.info("%s: MLFLOW_TRACKING_URI not set: nothing logged to MLflow", step)
        return False
    connect()
    return True


def dataset_source(uri: str | None, local_path: str | os.PathLike):
    """The MLflow source of a data set: its artifact URI (s3://, gs://, ...), else the local path."""
    from mlflow.data import sources
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    if uri and "://" in uri:
        try:
            return resolve_dataset_source(uri)
        except MlflowException:
            log.info("MLflow knows no data set source for %s: the local path stands for it", uri)
    return sources.LocalArtifactDatasetSource(str(Path(local_path).resolve()))


def dataset_input(dataset: Dataset, context: str, sha256: str, tags: dict | None = None) -> DatasetInput:
    """`dataset` as a run input in `context` (training, validation, ...), tagged with its full sha256."""
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    tags = {MLFLOW_DATASET_CONTEXT: context, "sha256": sha256, **(tags or {})}
    return DatasetInput(DatasetEntity(**dataset.to_dict()), tags=[InputTag(k, str(v)) for k, v in tags.items()])
