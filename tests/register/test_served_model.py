"""The served champion (components/register/serving.py) and the version's links, against the real MLflow + S3.

The chain is real: train_scratch trains and tracks its run, evaluate writes best_model, register logs the served
pyfunc. The champion answers images of any size through `mlflow.pyfunc.load_model` and through a real
`mlflow models serve` process.
"""

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

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from tlpipe.components.common import images
from tlpipe.components.common.synthetic import class_image
from tlpipe.stack.servers import stop_popen_group

KFP_UI = "http://127.0.0.1:8080/pipeline"
STAGE = "scratch"  # evaluate's name of the train_scratch model


def encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def photos() -> list[tuple[int, bytes]]:
    """(class index, encoded image) of the data set's classes at sizes other than the training size (32)."""
    sizes = [(80, 80, "JPEG"), (120, 72, "PNG"), (20, 20, "PNG"), (57, 91, "JPEG"), (64, 64, "WEBP"), (33, 48, "PNG")]
    return [(k % 3, encoded(class_image(k % 3, 3, 9000 + k, 96).resize((w, h)), fmt))
            for k, (w, h, fmt) in enumerate(sizes)]


@pytest.fixture(scope="module")
def served(stack, tmp_path_factory, session_examples, manifest_dir):
    """(name, registered version, training run id, KFP run id) of one model trained, evaluated and registered
    in a pipeline run ($KFP_RUN_ID) with $KFP_UI_URL set."""
    from tlpipe.components.common import model_artifact
    from tlpipe.components.evaluate import core as evaluate
    from tlpipe.components.register import core
    from tlpipe.components.train import core as train
    from tlpipe.components.train.params import TrainParams

    tmp = tmp_path_factory.mktemp("served")
    name, kfp_run = f"fish-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KFP_RUN_ID", kfp_run)
        env.setenv("KFP_UI_URL", KFP_UI + "/")
        train.train_scratch(session_examples, tmp / "scratch", TrainParams(
            batch_size=8, epochs=3, learning_rate=3e-3, augment=False, early_stopping_patience=0,
            dense_units=(16,), dropouts=(0.1,)))
        result = evaluate.evaluate(session_examples, {STAGE: tmp / "scratch"}, tmp / "eval", latency_repeats=2)
        best = evaluate.copy_best(result, {STAGE: tmp / "scratch"}, tmp / "best")
        registered = core.register(best, session_examples, manifest_dir, registered_model_name=name,
                                   tflite_latency_repeats=2)
    training_run = model_artifact.read_metadata(tmp / "scratch")["mlflow_run_id"]
    return name, registered.model_version, training_run, kfp_run, best


@pytest.fixture(scope="module")
def classes(session_examples) -> list[str]:
    from tlpipe.components.common.examples import read_schema

    return read_schema(session_examples)["classes"]


def test_version_carries_the_kfp_run_and_links_to_a_logged_model_of_the_training_run(served):
    from mlflow.tracking import MlflowClient

    name, version, training_run, kfp_run, _ = served
    client = MlflowClient()
    mv = client.get_model_version(name, version)
    assert mv.tags["kfp_run_id"] == kfp_run
    assert mv.tags["kfp_run_url"] == f"{KFP_UI}/#/runs/details/{kfp_run}"
    model_id = mv.tags["model_id"]
    assert mv.source == f"models:/{model_id}" and mv.run_id == training_run
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == training_run and str(logged.status) == "READY"
    assert {"name": name, "version": int(version)} in json.loads(logged.tags["mlflow.modelVersions"])
    assert {m.key for m in logged.metrics} >= {"test_accuracy", "test_macro_f1"}
    outputs = {o.model_id for o in client.get_run(training_run).outputs.model_outputs}
    assert outputs == {model_id, mv.tags["training_model_id"]}  # the served model and train's own Keras model
    assert client.get_logged_model(mv.tags["training_model_id"]).source_run_id == training_run
    register_run = client.get_run(mv.tags["mlflow_run_id.register"])
    assert model_id in {o.model_id for o in register_run.outputs.model_outputs}
    assert {f.path for f in client.list_artifacts(register_run.info.run_id, "tflite")} == {
        "tflite/model_float32.tflite", "tflite/model_dynamic_range.tflite"}


@pytest.fixture(scope="module")
def top_k(served) -> int:
    """evaluate's top-k of the registered model (evaluation.json): the served answer's default."""
    from tlpipe.components.common import model_artifact

    return int(model_artifact.read_evaluation(served[-1])["metrics"]["top_k"])


def test_signature_says_image_bytes_in_label_probability_top_k_out(served, top_k):
    import mlflow

    name, *_ = served
    signature = mlflow.models.get_model_info(f"models:/{name}@champion").signature
    assert signature.inputs.input_names() == ["image"] and signature.inputs.input_types()[0].name == "binary"
    assert signature.outputs.input_names() == ["label", "probability", "top_k"]
    assert [(p.name, p.default) for p in signature.params.params] == [("top_k", top_k)]


def test_champion_labels_images_of_any_size_as_the_keras_model_does(served, classes, top_k, session_examples):
    import mlflow

    from tlpipe.components.common import examples, model_artifact

    name, *_, best = served
    sent = photos()
    answer = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        pd.DataFrame({"image": [data for _, data in sent]}))
    assert list(answer.columns) == ["label", "probability", "top_k"] and len(answer) == len(sent)
    keras_model = model_artifact.load_model(best)
    # as training reads an example: preprocess's JPEG of the image at the examples' settings, as a record
    schema = examples.read_schema(session_examples)
    jpegs = [images.process(data, int(schema["image_size"]), schema["resize_mode"], int(schema["jpeg_quality"]))
             for _, data in sent]
    prepared = np.stack([examples.parse_example(examples.encode_example(jpeg, 0, b"sha"))[0].numpy()
                         for jpeg in jpegs])
    probs = keras_model(prepared.astype("float32"), training=False).numpy()
    assert list(answer["label"]) == [classes[i] for i in probs.argmax(axis=1)]
    assert set(answer["label"]) <= set(classes)
    np.testing.assert_allclose(answer["probability"], probs.max(axis=1), atol=1e-4)
    for row, p in zip(answer.itertuples(), probs, strict=True):
        assert [t["label"] for t in row.top_k] == [classes[i] for i in np.argsort(-p, kind="stable")[:top_k]]
        assert row.top_k[0] == {"label": row.label, "probability": row.probability}


def test_top_k_is_a_request_parameter(served, classes):
    import mlflow

    name, *_ = served
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    data = pd.DataFrame({"image": [photos()[0][1]]})
    ranked = model.predict(data, params={"top_k": 99})["top_k"][0]  # more than there are classes: all of them
    assert sorted(t["label"] for t in ranked) == classes
    assert [t["probability"] for t in ranked] == sorted((t["probability"] for t in ranked), reverse=True)
    assert sum(t["probability"] for t in ranked) == pytest.approx(1.0, abs=1e-4)
    (best,) = model.predict(data, params={"top_k": 1})["top_k"][0]
    assert best == ranked[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    """`mlflow models serve` of the champion on 127.0.0.1 (this venv, --env-manager local); its base URL."""
    name, *_ = served
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    bin_dir = Path(sys.executable).parent  # the server runs `uvicorn` from PATH: this venv's
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"mlflow models serve exited {proc.returncode}:\n{log_path.read_text()}"
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no /ping answer in 240 s:\n{log_path.read_text()}"
            time.sleep(1)
        yield url
    finally:
        stop_popen_group(proc, grace=30)


def _invoke(url: str, data: bytes) -> requests.Response:
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode("ascii")]]}}
    return requests.post(f"{url}/invocations", data=json.dumps(body), timeout=60,
                         headers={"Content-Type": "application/json"})


def test_served_over_http_names_a_class_of_the_data_set(served, server, classes, top_k):
    import mlflow

    name, *_ = served
    label, data = photos()[1]  # a 120×72 PNG
    response = _invoke(server, data)
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert answer["label"] in classes and 0 < answer["probability"] <= 1
    assert [t["label"] for t in answer["top_k"]][0] == answer["label"] and len(answer["top_k"]) == top_k
    local = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(pd.DataFrame({"image": [data]}))
    assert answer["label"] == local["label"][0]
    assert answer["probability"] == pytest.approx(local["probability"][0], abs=1e-6)


def test_served_over_http_refuses_what_is_not_an_image_naming_the_row(server):
    response = _invoke(server, b"this is not an image")
    assert response.status_code == 400
    assert "'image' of row 0 is not a decodable image" in response.json()["message"]
