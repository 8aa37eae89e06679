"""register against the real embedded MLflow + S3: gate decisions, idempotency, loading the champion, errors."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

CLASSES = ["class_00", "class_01", "class_02"]


def best_model_dir(tmp_path, model_factory, model, name, session_examples, stage="finetuned"):
    """A `best_model` artifact as evaluate writes it: the model folder plus evaluation.json."""
    from tlpipe.components.evaluate import core as evaluate

    folder = model_factory.save_artifact(model, tmp_path / f"{name}-model", CLASSES)
    result = evaluate.evaluate(session_examples, {stage: folder}, tmp_path / f"{name}-eval", latency_repeats=2,
                               metadata={stage: {"mlflow_run_id": "train-run-123", "backbone": "tiny"}})
    return evaluate.copy_best(result, {stage: folder}, tmp_path / f"{name}-best")


@pytest.fixture(scope="module")
def lifecycle(stack, tmp_path_factory, model_factory, trained, session_examples, manifest_dir):
    """Registrations of one name: a constant model, a worse one, a better one under min_improvement=0.99,
    the better one with the default gate (reusing its version), and the same inputs once more."""
    from tlpipe.components.register import core

    tmp = tmp_path_factory.mktemp("lifecycle")
    model, _ = trained
    name = f"fish-{uuid.uuid4().hex[:8]}"
    dirs = {"constant": best_model_dir(tmp, model_factory, model_factory.constant_model(model, 0), "constant",
                                      session_examples),
            "worse": best_model_dir(tmp, model_factory, model_factory.permuted_model(model), "worse",
                                   session_examples),
            "better": best_model_dir(tmp, model_factory, model, "better", session_examples)}
    results = {}
    steps = (("first", "constant", 0.0), ("worse", "worse", 0.0), ("not_enough", "better", 0.99),
             ("better", "better", 0.0), ("again", "better", 0.0))
    for step, key, min_improvement in steps:
        results[step] = core.register(dirs[key], session_examples, manifest_dir, registered_model_name=name,
                                      min_improvement=min_improvement, kfp_run_id=f"run-{name}",
                                      metadata={"backbone": "tiny", "image_size": 32},
                                      tflite_latency_repeats=5)
    return name, results


def test_first_registration_becomes_champion(lifecycle):
    _, results = lifecycle
    first = results["first"]
    assert first.promoted and first.model_version == "1" and first.champion_version is None
    assert first.new_score == pytest.approx(1 / 3)  # the constant model is right on one class in three
    assert "no champion yet" in first.decision


def test_worse_model_stays_challenger_with_both_scores_in_description(lifecycle):
    from mlflow.tracking import MlflowClient

    name, results = lifecycle
    worse = results["worse"]
    assert not worse.promoted and worse.model_version == "2"
    assert worse.new_score < worse.champion_score == pytest.approx(1 / 3)
    description = MlflowClient().get_model_version(name, "2").description
    assert "kept champion version 1" in description and f"{worse.new_score:.4f}" in description
    assert f"{worse.champion_score:.4f}" in description


def test_min_improvement_holds_back_a_smaller_gain(lifecycle):
    _, results = lifecycle
    held = results["not_enough"]
    assert not held.promoted and held.model_version == "3" and held.champion_version == "1"
    assert 0 < held.new_score - held.champion_score < 0.99 and "kept champion version 1" in held.decision


def test_better_model_replaces_champion_and_rerun_reuses_the_version(lifecycle):
    from mlflow.tracking import MlflowClient

    name, results = lifecycle
    better, again = results["better"], results["again"]
    assert better.promoted and better.model_version == "3" and better.champion_version == "1"
    assert better.reused_version and "promoted" in better.decision
    assert better.new_score > 0.8 and better.new_score > better.champion_score
    assert again.model_version == "3" and again.reused_version and "already the champion" in again.decision
    client = MlflowClient()
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    assert client.get_model_version_by_alias(name, "challenger").version == "3"


def test_version_tags_tflite_and_parent_run(lifecycle, session_examples, manifest_dir):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils
    from tlpipe.components.common.hashing import sha256_file

    name, _ = lifecycle
    client = MlflowClient()
    version = client.get_model_version(name, "3")
    tags = version.tags
    assert tags["kfp_run_id"] == f"run-{name}"
    assert tags["manifest_sha256"] == sha256_file(manifest_dir / "manifest.parquet")
    assert tags["mlflow_run_id.finetuned"] == "train-run-123"
    assert tags["backbone"] == "tiny" and tags["image_size"] == "32"
    assert float(tags["test_accuracy"]) > 0.8
    run = client.get_run(version.run_id)
    for variant in ("float32", "dynamic_range"):
        assert run.data.metrics[f"tflite_{variant}_accuracy"] > 0.8
        assert run.data.metrics[f"tflite_{variant}_latency_ms_b1"] > 0
    files = {f.path for f in client.list_artifacts(version.run_id, "tflite")}
    assert files == {"tflite/model_float32.tflite", "tflite/model_dynamic_range.tflite"}
    parent = client.get_run(mlflow_utils.parent_run_id(f"run-{name}"))
    assert parent.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert mlflow.get_tracking_uri().startswith("http")


def test_champion_loads_from_registry_and_predicts_test_classes(lifecycle, session_examples):
    import io

    import mlflow
    import pandas as pd
    from PIL import Image

    from tlpipe.components.common.scoring import load_test_arrays

    name, _ = lifecycle
    images, labels, classes = load_test_arrays(session_examples)
    encoded = []
    for image in images:  # the served model takes encoded images (tests/register/test_served_model.py)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        encoded.append(buf.getvalue())
    answer = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(pd.DataFrame({"image": encoded}))
    assert (answer["label"] == [classes[i] for i in labels]).mean() > 0.8


def test_models_cli_list_show_promote_rollback(lifecycle, capsys):
    from mlflow.tracking import MlflowClient

    from tlpipe.cli.main import main

    name, _ = lifecycle
    client = MlflowClient()
    assert main(["models", "list", name]) == 0
    out = capsys.readouterr().out
    assert "3" in out and "champion" in out and "challenger" in out
    assert main(["models", "show", name, "@champion", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "3" and "champion" in shown["aliases"]
    assert main(["models", "rollback", name]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert main(["models", "promote", name, "3"]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    capsys.readouterr()
    assert main(["models", "promote", name, "99"]) != 0
    assert "99" in capsys.readouterr().err
    assert client.get_model_version_by_alias(name, "champion").version == "3"


def test_unloadable_champion_blocks_promotion_unless_forced(stack, tmp_path, model_factory, trained,
                                                           session_examples, manifest_dir):
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils
    from tlpipe.components.register import core, registry

    mlflow_utils.connect()
    client = MlflowClient()
    name = f"fish-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    broken = client.create_model_version(name, source="s3://mlflow/no-such-model-here")
    client.set_registered_model_alias(name, registry.CHAMPION, broken.version)
    best = best_model_dir(tmp_path, model_factory, trained[0], "good", session_examples)

    refused = core.register(best, session_examples, manifest_dir, registered_model_name=name,
                            tflite_latency_repeats=2)
    assert not refused.promoted
    assert "could not be loaded" in refused.decision and "NOT promoted" in refused.decision
    assert client.get_model_version_by_alias(name, registry.CHAMPION).version == broken.version

    forced = core.register(best, session_examples, manifest_dir, registered_model_name=name,
                           force_promote=True, tflite_latency_repeats=2)
    assert forced.promoted and forced.model_version == refused.model_version
    assert client.get_model_version_by_alias(name, registry.CHAMPION).version == forced.model_version


class _DenyingMlflow(BaseHTTPRequestHandler):
    """Answers like an MLflow server behind its basic-auth app for an identity without permissions."""

    def _answer(self):
        ok = self.path.startswith("/health")
        body = b"OK" if ok else b"Permission denied"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


def test_registry_permission_denied_names_the_action_and_model(tmp_path, monkeypatch, model_factory, trained,
                                                               session_examples, manifest_dir):
    import mlflow

    from tlpipe.components.register import core
    from tlpipe.components.register.registry import RegistryPermissionError

    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyingMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    previous_uri = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
    folder = model_factory.save_artifact(trained[0], tmp_path / "model", CLASSES)
    try:
        with pytest.raises(RegistryPermissionError, match=r"refused to read the registered model \(registered "
                                                          r"model 'fish-denied', PERMISSION_DENIED\)"):
            core.register(folder, session_examples, manifest_dir, registered_model_name="fish-denied")
    finally:
        mlflow.set_tracking_uri(previous_uri)
        server.shutdown()
        server.server_close()
        thread.join()


def test_models_cli_reports_unreachable_mlflow_after_retries(monkeypatch, capsys):
    import socket

    from tlpipe.cli.main import main

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port} is unreachable after 3 attempts" in err
