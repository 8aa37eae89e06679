"""The embedded stack is real: S3 round-trips and refuses bad credentials, MLflow stores artifacts in S3."""

from __future__ import annotations

import io
import os
import stat

import mlflow
import numpy as np
import pytest
import requests
from minio import Minio
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.mlflow_utils import connect, stage_run
from tlpipe.components.common.settings import S3Settings
from tlpipe.stack.servers import Stack, _group_members


def test_object_round_trips_through_s3(s3_client, bucket):
    payload = os.urandom(6 * 1024 * 1024)  # above the multipart threshold of 5 MiB parts
    s3_client.put_object(bucket, "dir/blob.bin", io.BytesIO(payload), len(payload), part_size=5 * 1024 * 1024)
    assert s3_client.get_object(bucket, "dir/blob.bin").read() == payload
    assert list(s3lib.iter_keys(s3_client, f"s3://{bucket}/dir")) == ["dir/blob.bin"]


def test_wrong_secret_and_unknown_key_are_refused(stack, bucket):
    env = stack.env()
    for access, secret in ((env["AWS_ACCESS_KEY_ID"], "not-the-secret"), ("UNKNOWNKEY", env["AWS_SECRET_ACCESS_KEY"])):
        client = s3lib.client(S3Settings(env["S3_ENDPOINT_URL"], access, secret))
        with pytest.raises(s3lib.S3AccessError, match=f"refused bucket '{bucket}'") as err:
            s3lib.retry(lambda c=client: c.list_objects(bucket).__next__(), what="list", bucket=bucket,
                        endpoint=env["S3_ENDPOINT_URL"])
        assert env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


def test_anonymous_access_is_refused(stack, s3_client, bucket):
    s3_client.put_object(bucket, "secret.txt", io.BytesIO(b"x"), 1)
    anonymous = Minio(stack.env()["S3_ENDPOINT_URL"].split("//")[1], secure=False, region="us-east-1")
    with pytest.raises(Exception, match="AccessDenied|Access Denied"):
        anonymous.get_object(bucket, "secret.txt").read()


def test_env_file_is_private_and_complete(stack):
    mode = stat.S_IMODE(stack.env_file.stat().st_mode)
    assert mode == 0o600
    text = stack.env_file.read_text()
    for key in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"):
        assert f"export {key}=" in text


def test_mlflow_run_artifact_lands_in_s3_and_model_gets_alias(stack, s3_client):
    connect()
    with stage_run("unit", kfp_run_id="kfp-test-1", experiment="stack-test") as run:
        mlflow.log_param("learning_rate", 0.001)
        mlflow.log_text("hello", "notes/hello.txt")
        model = LogisticRegression().fit(np.array([[0.0], [1.0], [0.1], [0.9]]), [0, 1, 0, 1])
        mlflow.sklearn.log_model(model, name="model", registered_model_name="stack-test-model")
    client = MlflowClient()
    parent = client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["kfp_run_id"] == "kfp-test-1"
    # The artifact is stored in the mlflow bucket of the real S3 server (proxied by the tracking server).
    keys = list(s3lib.iter_keys(s3_client, "s3://mlflow/artifacts"))
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys
    version = client.search_model_versions("name='stack-test-model'")[0].version
    client.set_registered_model_alias("stack-test-model", "champion", version)
    assert client.get_model_version_by_alias("stack-test-model", "champion").version == version
    loaded = mlflow.pyfunc.load_model("models:/stack-test-model@champion")
    assert list(loaded.predict(np.array([[0.0], [1.0]]))) == [0, 1]


def test_up_reuses_a_running_stack(stack):
    before = {name: s.pid for name, s in stack.servers().items()}
    Stack(stack.state_dir).up()
    assert {name: s.pid for name, s in stack.servers().items()} == before


def test_down_leaves_no_process_behind(tmp_path):
    stack = Stack(tmp_path / "state")
    servers = stack.up()
    assert all(row["healthy"] for row in stack.status())
    pids = [s.pid for s in servers.values()]
    url = servers["mlflow"].url
    stack.down(grace=5)
    assert all(not _group_members(pid) for pid in pids)
    assert stack.status() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=2)


def test_stack_status_command_reports_both_servers(stack, capsys):
    from tlpipe.cli.main import main

    assert main(["stack", "--state-dir", str(stack.state_dir), "status"]) == 0
    out = capsys.readouterr().out
    assert out.count("healthy") == 2 and stack.env()["MLFLOW_TRACKING_URI"] in out
    assert stack.env()["AWS_SECRET_ACCESS_KEY"] not in out
