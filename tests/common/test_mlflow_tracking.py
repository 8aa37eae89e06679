"""mlflow_utils' closing rule and parent-run logging, against the real MLflow server of the test stack."""

from __future__ import annotations

import logging
import uuid

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tlpipe.components.common import mlflow_utils


@pytest.fixture
def experiment(stack) -> str:
    mlflow_utils.connect()
    return f"utils-{uuid.uuid4().hex[:8]}"


def statuses(experiment: str) -> dict[str, str]:
    """{run name: status} of every run in the experiment."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id],
                                                                      run_view_type=ViewType.ALL)}


def test_a_failing_stage_closes_its_run_and_marks_the_parent_failed(experiment):
    with pytest.raises(RuntimeError, match="out of memory"), \
            mlflow_utils.stage_run("train_frozen", kfp_run_id="run-failing", experiment=experiment):
        raise RuntimeError("out of memory")
    assert statuses(experiment) == {"pipeline-run-failing": "FAILED", "train_frozen": "FAILED"}


def test_outside_a_pipeline_a_stage_run_is_top_level_and_nothing_goes_to_a_parent(experiment, monkeypatch):
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    with mlflow_utils.stage_run("evaluate", kfp_run_id="local", experiment=experiment) as run:
        assert mlflow_utils.log_to_parent("local", experiment, params={"top_k": 3}) is None
    assert statuses(experiment) == {"evaluate": "FINISHED"}
    assert "mlflow.parentRunId" not in MlflowClient().get_run(run.info.run_id).data.tags


def test_a_param_already_on_the_parent_keeps_its_value(experiment, caplog):
    parent = mlflow_utils.log_to_parent("run-twice", experiment, params={"batch_size": 8, "seed": 1})
    with caplog.at_level(logging.WARNING, logger="tlpipe.mlflow"):
        assert mlflow_utils.log_to_parent("run-twice", experiment, params={"batch_size": 16, "epochs": 2}) == parent
    assert MlflowClient().get_run(parent).data.params == {"batch_size": "8", "seed": "1", "epochs": "2"}
    assert "already has batch_size='8': '16' not logged" in caplog.text


def test_steps_without_a_run_skip_mlflow_outside_a_pipeline_or_without_a_server(monkeypatch, caplog):
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: never contacted
    with caplog.at_level(logging.INFO, logger="tlpipe.mlflow"):
        assert mlflow_utils.connect_step("ingest") is False
        monkeypatch.setenv("KFP_RUN_ID", "run-1")
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        assert mlflow_utils.connect_step("preprocess") is False
    assert "ingest: not in a pipeline run ($KFP_RUN_ID unset): nothing logged to MLflow" in caplog.text
    assert "preprocess: MLFLOW_TRACKING_URI not set: nothing logged to MLflow" in caplog.text
