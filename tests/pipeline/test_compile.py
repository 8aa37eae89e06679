"""The compiled pipeline: strict PipelineSpec, the seven components, defaults, images, Secret, no credentials."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes.kubernetes_executor_config_pb2 import KubernetesExecutorConfig

from tlpipe.cli.main import main
from tlpipe.components.common.settings import ALL_ENV_VARS, CREDENTIALS_SECRET
from tlpipe.pipelines.compiler import compile_pipeline, parameter_defaults, validate_pipeline_yaml
from tlpipe.pipelines.pipeline import PIPELINE_NAME
from tlpipe.pipelines.settings import STEP_IMAGE_FAMILY, ImageSettings, ResourceSettings

SEVEN = {"ingest", "preprocess", "train-frozen", "finetune", "train-scratch", "evaluate", "register"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile") / "pipeline.yaml"
    compile_pipeline(path, ImageSettings(prefix="registry.example.com/ml", tag="1.2.3"),
                     ResourceSettings(train_cpu="6", train_memory="12G"))
    spec, platform = validate_pipeline_yaml(path)
    return path, spec, platform


def test_spec_is_strict_and_has_the_seven_components(compiled):
    _, spec, _ = compiled
    assert spec.pipeline_info.name == PIPELINE_NAME
    components = {name.removeprefix("comp-").removesuffix("-op") for name in spec.components}
    assert SEVEN <= components, components
    tasks = set(spec.root.dag.tasks)
    assert {"listing-fingerprint-op", "ingest-op", "preprocess-op", "train-frozen-op", "evaluate-op",
            "register-op"} <= tasks, tasks


def test_parameters_keep_the_original_design_defaults(compiled):
    defaults = parameter_defaults(compiled[0])
    expected = {"num_classes": 9, "image_size": 224, "batch_size": 32, "epochs": 10, "learning_rate": 1e-3,
                "unfreeze_layers": 50, "finetune_learning_rate": 1e-5, "backbone": "MobileNetV2",
                "weights": "imagenet", "early_stopping_monitor": "val_loss", "spark_backend": "local",
                "registered_model_name": "fish-classifier",
                "experiment": "fish-classification", "run_finetune": True, "run_scratch_baseline": True}
    assert {k: defaults[k] for k in expected} == expected


def test_every_executor_uses_the_configured_image(compiled):
    images = _executor_images(compiled[0])
    assert images and all(img.startswith("registry.example.com/ml/") and img.endswith(":1.2.3")
                          for img in images.values()), images
    families = {img.split("/")[-1].split(":")[0] for img in images.values()}
    assert families == set(STEP_IMAGE_FAMILY.values())


def _executor_images(path) -> dict[str, str]:
    doc = next(yaml.safe_load_all(path.read_text()))
    return {name: ex["container"]["image"] for name, ex in doc["deploymentSpec"]["executors"].items()}


def test_credentials_come_from_the_secret_and_never_from_the_yaml(tmp_path, monkeypatch):
    secret = "SUPER-secret-value-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSHOULDNOTLEAK")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    path = compile_pipeline(tmp_path / "p.yaml")
    text = path.read_text()
    for value in (secret, "AKIDSHOULDNOTLEAK", "mlflow.internal"):
        assert value not in text
    _, platform = validate_pipeline_yaml(path)
    executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    assert executors
    for name, struct in executors.items():
        config = json_format.ParseDict(struct, KubernetesExecutorConfig())  # the kfp-kubernetes proto, strict
        if "skip-stage" in name:
            assert not config.secret_as_env
            continue
        (secret_env,) = config.secret_as_env
        assert secret_env.secret_name_parameter.runtime_value.constant.string_value == CREDENTIALS_SECRET
        assert {m.secret_key: m.env_var for m in secret_env.key_to_env} == {k: k for k in ALL_ENV_VARS}
        assert [f.name for f in config.field_path_as_env] == ["KFP_RUN_ID"]


def test_caching_retries_and_resources(compiled):
    _, spec, _ = compiled
    tasks = spec.root.dag.tasks
    assert not tasks["register-op"].caching_options.enable_cache
    assert not tasks["listing-fingerprint-op"].caching_options.enable_cache
    assert tasks["ingest-op"].caching_options.enable_cache and tasks["train-frozen-op"].caching_options.enable_cache
    assert tasks["train-frozen-op"].retry_policy.max_retry_count == 2
    doc = next(yaml.safe_load_all(compiled[0].read_text()))
    resources = doc["deploymentSpec"]["executors"]["exec-train-frozen-op"]["container"]["resources"]
    assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) == ("6", "12G")
    finetune = doc["deploymentSpec"]["executors"]["exec-finetune-op"]["container"]["resources"]
    assert finetune["resourceCpuRequest"] == "6"


def test_gpu_compile_switches_train_steps(tmp_path):
    path = compile_pipeline(tmp_path / "gpu.yaml", resources=ResourceSettings(gpu=True))
    doc = next(yaml.safe_load_all(path.read_text()))
    train = doc["deploymentSpec"]["executors"]["exec-train-frozen-op"]["container"]
    assert train["image"] == ImageSettings().image("train-gpu")
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    ingest = doc["deploymentSpec"]["executors"]["exec-ingest-op"]["container"]
    assert ingest["image"] == ImageSettings().image("base") and "accelerator" not in ingest.get("resources", {})
    evaluate = doc["deploymentSpec"]["executors"]["exec-evaluate-op"]["container"]
    assert evaluate["image"] == ImageSettings().image("train") and "accelerator" not in evaluate.get("resources", {})


def test_compile_command(tmp_path, capsys):
    out = tmp_path / "cli.yaml"
    assert main(["compile", "-o", str(out), "--image-prefix", "r.io/team", "--image-tag", "7"]) == 0
    assert "validated" in capsys.readouterr().out
    assert set(_executor_images(out).values()) <= {ImageSettings("r.io/team", "7").image(f)
                                                   for f in ("base", "spark", "train")}
