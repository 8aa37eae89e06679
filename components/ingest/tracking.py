"""Ingest on the pipeline's MLflow parent run: its parameters, the manifest as an MLflow data set, and the
ingest report (JSON and HTML) as artifacts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tlpipe.components.common import manifest, mlflow_utils
from tlpipe.components.common.log import get_logger
from tlpipe.components.ingest.params import IngestParams

log = get_logger("ingest")

# ingest's parameters that the pipeline exposes, under the pipeline's names; the others go as `ingest.<name>`
PIPELINE_NAMES = {"expected_num_classes": "num_classes", **{name: name for name in (
    "group_pattern", "dedupe", "near_duplicate_method", "near_duplicate_similarity", "allow_similar_class_names")}}
ARTIFACT_PATH = "ingest"  # the parent run's artifact folder of the ingest report
UNLOGGED = ("max_workers", "memory_budget_mb")  # speed only: the result does not depend on them


def parent_params(data_uri: str, params: IngestParams) -> dict:
    """The parent run's params that ingest owns."""
    logged = {"data_uri": data_uri}
    for f in dataclasses.fields(params):
        if f.name not in UNLOGGED:
            logged[PIPELINE_NAMES.get(f.name, f"ingest.{f.name}")] = getattr(params, f.name)
    return logged


def log_manifest(out_dir: Path, data_uri: str, params: IngestParams, sha256: str, manifest_uri: str | None,
                 experiment: str) -> None:
    """Params, the manifest data set (digest: its sha256, source: the artifact's URI) and the report files on the
    parent run."""
    if not mlflow_utils.connect_step("ingest"):
        return
    import mlflow.data
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    df = pq.read_table(Path(out_dir) / manifest.MANIFEST_FILE).to_pandas()
    dataset = mlflow.data.from_pandas(df, source=mlflow_utils.dataset_source(manifest_uri, out_dir),
                                      targets="label", name="manifest", digest=sha256[:mlflow_utils.DIGEST_CHARS])
    parent = mlflow_utils.log_to_parent("", experiment, params=parent_params(data_uri, params),
                                        datasets=[mlflow_utils.dataset_input(dataset, "ingest", sha256)])
    for name in (manifest.REPORT_FILE, manifest.REPORT_HTML_FILE):
        MlflowClient().log_artifact(parent, str(Path(out_dir) / name), ARTIFACT_PATH)
    log.info("ingest: params, the manifest data set and the ingest report (artifacts %s/) on MLflow parent run %s",
             ARTIFACT_PATH, parent)
