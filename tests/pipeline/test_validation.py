"""Validation before work: one schema of the pipeline's parameters, used by `tlpipe local` before anything starts
and by the pipeline's first task, so a value launched from the dashboard fails in seconds, named."""

from __future__ import annotations

import re
import time

import pytest
from kfp import components, local

from tlpipe.cli.demo import DEMO_PARAMS
from tlpipe.cli.main import main
from tlpipe.components.common.settings import ALL_ENV_VARS
from tlpipe.pipelines.compiler import compile_pipeline
from tlpipe.pipelines.pipeline import build_pipeline
from tlpipe.pipelines.validation import PARAMETERS, InvalidParameterError, defaults, validate_parameters
from tlpipe.stack import Stack

KFP_TYPES = {"Integer": int, "Float": float, "Boolean": bool, "String": str, "Dict": dict}

BAD = [  # (parameter, value, what the one line must say)
    ("epochs", 0, "epochs must be >= 1"),
    ("epochs", "three", "must be a whole number"),
    ("image_size", 0, "image_size must be within 8..4096"),
    ("backbone", "VGG16", "backbone must be one of MobileNetV2, ResNet50, EfficientNetB0"),
    ("learning_rate", 0, "learning_rate must be > 0"),
    ("finetune_epochs", -1, "finetune_epochs must be >= 1"),
    ("early_stopping_monitor", "loss", "early_stopping_monitor must be one of"),
    ("feature_cache", "augmented:x", "feature_cache must be 'off', 'on'"),
    ("dedupe", "fuzzy", "dedupe must be one of off, exact, near"),
    ("group_pattern", "(", "not a valid regular expression"),
    ("group_pattern", "abc", "needs a capture group"),
    ("num_classes", -1, "expected_num_classes >= 0"),
    ("resize_mode", "crop", "resize_mode must be one of"),
    ("spark_backend", "yarn", "spark_backend must be one of"),
    ("spark_options", "fast", "must be a JSON object"),
    ("selection_metric", "auc", "selection_metric must be one of"),
    ("top_k", 0, "top_k must be at least 1"),
    ("min_improvement", -0.1, "min_improvement must be >= 0"),
    ("data_uri", "/data/fish", "not an s3:// URI"),
    ("weights", "./no-such.weights.h5", "no such file here"),
    ("run_finetune", "maybe", "must be true or false"),
    ("unfreeze_layers", -2, "unfreeze_layers must be >= 0"),
    ("registered_model_name", " ", "must not be empty"),
    ("weight_decay", -1e-4, "weight_decay must be >= 0"),
    ("label_smoothing", 1.0, "label_smoothing must be in [0, 1)"),
    ("tune_finetune_trials", 0, "tune_finetune_trials must be >= 1"),
    ("tune_finetune_timeout_s", -5, "tune_finetune_timeout_s must be >= 0"),
    ("tune_space", '{"unfreeze_layers": {"choices": [0]}}', "unfreeze_layers: layer counts must be whole numbers >= 1"),
    ("tune", "always", "tune must be one of ('off', 'frozen', 'all')"),
    ("tune_trials", 0, "tune_trials must be >= 1"),
    ("tune_trials", 2.5, "must be a whole number"),
    ("tune_timeout_s", -1, "tune_timeout_s must be >= 0"),
    ("tune_space", "{lr: 1}", "tune_space is not valid JSON"),
    ("tune_space", '["learning_rate"]', "tune_space must be a JSON object with keys among ['augment', 'dense_units', "),
    ("tune_space", '{"momentum": {"low": 0.8, "high": 0.99}}', "with keys among"),
    ("tune_space", '{"feature_cache": {"choices": ["on", "augmented:x"]}}', "feature_cache must be 'off', 'on'"),
    ("tune_space", '{"learning_rate": {"low": 0.1}}', "tune_space learning_rate: a range needs numbers low <= high"),
    ("deploy", "seldon", "deploy must be one of ('off', 'kserve')"),
    ("inference_service", "Fish_v2", "inference_service must be a DNS label"),
    ("deploy_namespace", "-tlpipe", "namespace must be a DNS label"),
    ("deployment_mode", "Knative", "deployment_mode must be one of ('RawDeployment', 'Serverless')"),
    ("canary_traffic_percent", 10, "canary_traffic_percent 10 needs deployment_mode Serverless"),
    ("canary_traffic_percent", 2.5, "must be a whole number"),
    ("ready_timeout_s", 0, "ready_timeout_s must be > 0"),
]


@pytest.mark.parametrize(("name", "value", "reason"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_a_bad_value_is_one_line_naming_the_parameter_and_what_is_allowed(name, value, reason):
    with pytest.raises(InvalidParameterError) as caught:
        validate_parameters({name: value})
    message = str(caught.value)
    assert message.startswith(f"parameter {name}={value!r}: ") and reason in message, message
    assert "\n" not in message


def test_two_parameters_checked_together_name_the_one_to_change():
    with pytest.raises(InvalidParameterError, match=r"^parameter alpha=0\.35: .*backbone ResNet50 needs alpha=1\.0"):
        validate_parameters({"backbone": "ResNet50", "alpha": 0.35})
    with pytest.raises(InvalidParameterError, match=r"^parameter feature_cache='augmented:2': .*needs augment=True"):
        validate_parameters({"feature_cache": "augmented:2", "augment": False})
    with pytest.raises(InvalidParameterError, match=r"^unknown pipeline parameter 'epoch'; known: data_uri, "):
        validate_parameters({"epoch": 3})


def test_a_canary_needs_serverless_even_before_any_work():
    """KServe splits traffic only in Serverless mode: the canary is refused up front, naming it, with deploy
    kserve and with deploy off (whose deploy task would refuse it at the end of the run); Serverless passes."""
    for deploy in ("kserve", "off"):
        with pytest.raises(InvalidParameterError, match=r"^parameter canary_traffic_percent=10: .*needs "
                                                        r"deployment_mode Serverless"):
            validate_parameters({"deploy": deploy, "canary_traffic_percent": 10, "deployment_mode": "RawDeployment"})
    canary = {"deploy": "kserve", "canary_traffic_percent": "10", "deployment_mode": "Serverless"}
    assert validate_parameters(canary) == {**canary, "canary_traffic_percent": 10}


def test_good_values_come_back_typed(tmp_path):
    weights = tmp_path / "backbone.keras"
    weights.write_bytes(b"x")
    given = {"epochs": 3.0, "learning_rate": 1, "run_finetune": "false", "num_classes": 0, "weights": str(weights),
             "alpha": 0.35, "feature_cache": "augmented:2", "spark_options": {"partitions": 4}}
    assert validate_parameters(given) == {**given, "epochs": 3, "learning_rate": 1.0, "run_finetune": False}
    assert validate_parameters({"weights": "s3://b/w.keras"}) == {"weights": "s3://b/w.keras"}
    assert validate_parameters({"weights": "./no-such.keras"}, check_files=False)  # the pipeline's own check
    assert validate_parameters({}) == {}  # every default passes
    assert validate_parameters(DEMO_PARAMS, check_files=False)["tune_timeout_s"] == 45.0  # what `tlpipe demo` runs
    space = '{"feature_cache": "on", "dense_units": {"choices": ["", "64"]}}'
    assert validate_parameters({"tune": "off", "tune_trials": "5", "tune_timeout_s": 0, "tune_space": space}) == {
        "tune": "off", "tune_trials": 5, "tune_timeout_s": 0.0, "tune_space": space}
    assert validate_parameters({"tune": "all", "tune_space": '{"augment": false}'})["tune"] == "all"


def test_tune_all_needs_the_finetune_stage():
    with pytest.raises(InvalidParameterError, match=r"^parameter tune='all': tune=all searches the fine-tuning stage: "
                                                     r"it needs run_finetune=true"):
        validate_parameters({"tune": "all", "run_finetune": False})


def test_the_schema_is_the_pipelines_parameters():
    """Same names, defaults and types as the compiled pipeline's inputs (and so as every step's params.py)."""
    inputs = build_pipeline().component_spec.inputs
    assert list(PARAMETERS) == list(inputs)
    assert defaults() == {name: spec.default for name, spec in inputs.items()}
    assert {n: p.type for n, p in PARAMETERS.items()} == {n: KFP_TYPES[s.type] for n, s in inputs.items()}


@pytest.mark.parametrize(("argv", "named"), [
    (["-p", "epochs=three"], "epochs='three'"),
    (["-p", "epochs=2", "-p", "backbone=VGG16"], "backbone='VGG16'"),
    (["-p", "data_uri=s3://b/p"], "-p data_uri"),
    (["-p", "epochs=2"], "--data"),  # good values, but --data names no folder
    (["-p", "deploy=kserve", "-p", "canary_traffic_percent=10", "-p", "deployment_mode=RawDeployment"],
     "canary_traffic_percent=10"),
], ids=["epochs=three", "backbone=VGG16", "data_uri", "no-such-data", "canary-in-RawDeployment"])
def test_tlpipe_local_fails_in_seconds_without_starting_a_server(argv, named, monkeypatch, tmp_path, capsys):
    for name in ALL_ENV_VARS:  # as on a fresh machine: the embedded stack would be started
        monkeypatch.delenv(name, raising=False)
    started = []
    monkeypatch.setattr(Stack, "up", lambda self, *args, **kwargs: started.append(self))
    began = time.monotonic()
    code = main(["local", "--data", str(tmp_path / "no-such-folder"), "--state-dir", str(tmp_path / "state"), *argv])
    seconds = time.monotonic() - began
    err = capsys.readouterr().err
    assert code == 2 and seconds < 2, (code, seconds, err)
    assert not started and not (tmp_path / "state").exists()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("tlpipe: error: ") and named in err, err


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"backbone": "VGG16"}, {"tune": "sometimes"},
                                 {"canary_traffic_percent": 10}],  # with the default deployment_mode RawDeployment
                         ids=["epochs=0", "backbone=VGG16", "tune=sometimes", "canary=10"])
def test_the_compiled_pipeline_stops_at_its_validation_task(bad, tmp_path, capfd):
    """As a run launched from the KFP dashboard: the compiled YAML fails in validate-parameters, in seconds."""
    package = compile_pipeline(tmp_path / "pipeline.yaml")
    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="validate-parameters-op"):
        components.load_component_from_file(str(package))(data_uri="s3://no-bucket/data", **bad)
    assert time.monotonic() - began < 60
    (name, value), = bad.items()
    logs = "".join(capfd.readouterr())
    assert f"InvalidParameterError: parameter {name}={value!r}: " in logs
    assert re.findall(r"Executing task \S*'([\w-]+)'", logs) == ["validate-parameters-op"]  # nothing else ran
