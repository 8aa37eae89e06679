"""What KServe would run, on this machine: a model registered by the real register step (embedded S3 + MLflow),
its storageUri as the deploy step resolves it, the objects under it downloaded as KServe's storage initializer
does, and the ServingRuntime's own command (manifests/kserve) serving them, answered with a class name."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.deploy.test_manifests import MANIFESTS, render
from tests.register.conftest import manifest_dir  # noqa: F401  (the fixture)
from tests.register.test_register import CLASSES, best_model_dir
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.synthetic import class_image
from tlpipe.components.deploy import inference_service as isvc
from tlpipe.components.deploy.params import DeployParams
from tlpipe.stack.servers import stop_popen_group


@pytest.fixture(scope="module")
def model_folder(stack, tmp_path_factory, model_factory, trained, session_examples, manifest_dir):  # noqa: F811
    """The registered champion's files, fetched from its storageUri as KServe's storage initializer does."""
    from mlflow.tracking import MlflowClient

    from tlpipe.components.register import core

    tmp = tmp_path_factory.mktemp("kserve")
    name = f"fish-{uuid.uuid4().hex[:8]}"
    model, _ = trained
    result = core.register(best_model_dir(tmp, model_factory, model, "m", session_examples), session_examples,
                           manifest_dir, registered_model_name=name, tflite_latency_repeats=2)
    uri = isvc.storage_uri(MlflowClient(), name, result.model_version, DeployParams.artifacts_destination)
    bucket, prefix = s3lib.split_uri(uri)
    client, dest = s3lib.client(), tmp / "mnt-models"
    for obj in client.list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True):
        target = dest / obj.object_name[len(prefix.rstrip("/")) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(bucket, obj.object_name, str(target))
    return dest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_serving_runtime_answers_a_class_name_from_the_storage_uri(model_folder, tmp_path):
    assert (model_folder / "MLmodel").is_file()  # storageUri is the folder holding the MLmodel
    (runtime,) = render(MANIFESTS / "kserve")
    (container,) = runtime["spec"]["containers"]
    port = _free_port()
    swap = {"/mnt/models": str(model_folder), "0.0.0.0": "127.0.0.1", "8080": str(port)}
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / container["command"][0]), *container["command"][1:],
           *[swap.get(a, a) for a in container["args"]]]
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        probe = container["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"the runtime exited {proc.returncode}:\n{log_path.read_text()}"
            try:
                if requests.get(url + probe, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no {probe} answer in 240 s:\n{log_path.read_text()}"
            time.sleep(1)
        png = io.BytesIO()
        class_image(1, 3, 4242, 96).resize((70, 50)).save(png, "PNG")
        # the body manifests/kserve/sample-request.sh sends
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(png.getvalue()).decode()]]},
                "params": {"top_k": 3}}
        assert '"dataframe_split": {"columns": ["image"]' in (MANIFESTS / "kserve" / "sample-request.sh").read_text()
        response = requests.post(f"{url}/invocations", data=json.dumps(body), timeout=60,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        assert answer["label"] in CLASSES and len(answer["top_k"]) == 3
    finally:
        stop_popen_group(proc, grace=30)
