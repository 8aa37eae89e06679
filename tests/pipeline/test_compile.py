"""The compiled pipeline: strict PipelineSpec, every step, defaults, images, Secret, no credentials, backend targets."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes.kubernetes_executor_config_pb2 import KubernetesExecutorConfig

from tlpipe.cli.main import main
from tlpipe.components.common.settings import ALL_ENV_VARS, CREDENTIALS_SECRET
from tlpipe.pipelines import backends, settings
from tlpipe.pipelines.compiler import compile_pipeline, parameter_defaults, validate_pipeline_yaml
from tlpipe.pipelines.pipeline import PIPELINE_NAME
from tlpipe.pipelines.settings import STEP_IMAGE_FAMILY, ImageSettings, ResourceSettings

STEPS = {"validate-parameters", "ingest", "preprocess", "tune", "train-frozen", "finetune", "train-scratch", "evaluate",
         "register", "deploy"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile") / "pipeline.yaml"
    compile_pipeline(path, ImageSettings(prefix="registry.example.com/ml", tag="1.2.3"),
                     ResourceSettings(train_cpu="6", train_memory="12G"))
    spec, platform = validate_pipeline_yaml(path)
    return path, spec, platform


def test_spec_is_strict_and_has_every_step(compiled):
    _, spec, _ = compiled
    assert spec.pipeline_info.name == PIPELINE_NAME
    components = {name.removeprefix("comp-").removesuffix("-op") for name in spec.components}
    assert STEPS <= components, components
    tasks = set(spec.root.dag.tasks)
    assert {"listing-fingerprint-op", "ingest-op", "preprocess-op", "train-frozen-op", "evaluate-op",
            "register-op"} <= tasks, tasks


def test_parameters_keep_the_original_design_defaults(compiled):
    defaults = parameter_defaults(compiled[0])
    expected = {"num_classes": 0, "image_size": 224, "batch_size": 32, "epochs": 10, "learning_rate": 1e-3,
                "unfreeze_layers": 50, "finetune_learning_rate": 1e-5, "backbone": "MobileNetV2",
                "weights": "imagenet", "early_stopping_monitor": "val_loss", "spark_backend": "local",
                "registered_model_name": "fish-classifier",
                "experiment": "fish-classification", "run_finetune": True, "run_scratch_baseline": True,
                "deploy": "off"}
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
    assert executors and "exec-validate-parameters-op" not in executors  # validation needs no credentials
    for struct in executors.values():
        config = json_format.ParseDict(struct, KubernetesExecutorConfig())  # the kfp-kubernetes proto, strict
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
    tune = doc["deploymentSpec"]["executors"]["exec-tune-op"]["container"]
    assert (tune["resources"]["resourceCpuLimit"], tune["resources"]["resourceMemoryLimit"]) == ("6", "12G")
    assert tune["image"] == "registry.example.com/ml/train:1.2.3" and tasks["tune-op"].retry_policy.max_retry_count == 2


def test_the_tune_step_feeds_the_frozen_stage_and_the_report(compiled):
    """tune runs on the examples and the manifest's groups; train-frozen and evaluate read its tune_result."""
    _, spec, _ = compiled
    tasks = spec.root.dag.tasks
    tune = tasks["tune-op"]
    assert {k: a.task_output_artifact.producer_task for k, a in tune.inputs.artifacts.items()} == {
        "examples": "preprocess-op", "manifest": "ingest-op"}
    for name in ("tune", "tune_trials", "tune_timeout_s", "tune_space", "epochs", "learning_rate", "feature_cache",
                 "weight_decay", "label_smoothing"):
        assert tune.inputs.parameters[name].component_input_parameter == name
    for task in ("train-frozen-op", "evaluate-op"):
        source = tasks[task].inputs.artifacts["tune_result"].task_output_artifact
        assert (source.producer_task, source.output_artifact_key) == ("tune-op", "tune_result"), task
    frozen = set(tasks["train-frozen-op"].inputs.parameters)
    assert not frozen & {"epochs", "learning_rate", "feature_cache", "augment"}  # the tune result says those
    assert {"weight_decay", "label_smoothing"} <= set(tasks["train-scratch-op"].inputs.parameters)


def test_the_deploy_step_follows_register_with_the_deploy_parameters(compiled):
    """deploy gets register's model_version and every deploy parameter (deploy_namespace as its namespace); like
    register it is never served from cache and has no retries; it runs small, on the base image."""
    path, spec, _ = compiled
    task = spec.root.dag.tasks["deploy-op"]
    source = task.inputs.parameters["model_version"].task_output_parameter
    assert (source.producer_task, source.output_parameter_key) == ("register-op", "model_version")
    assert {name: p.component_input_parameter for name, p in task.inputs.parameters.items()
            if name != "model_version"} == {
        "registered_model_name": "registered_model_name", "deploy": "deploy", "inference_service": "inference_service",
        "namespace": "deploy_namespace", "deployment_mode": "deployment_mode",
        "canary_traffic_percent": "canary_traffic_percent", "ready_timeout_s": "ready_timeout_s"}
    assert task.task_info.name == "deploy" and "register-op" in task.dependent_tasks
    assert not task.caching_options.enable_cache and not task.retry_policy.max_retry_count
    container = next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]["exec-deploy-op"]["container"]
    assert container["image"] == "registry.example.com/ml/base:1.2.3"
    assert (container["resources"]["resourceCpuLimit"], container["resources"]["resourceMemoryLimit"]) == (
        settings.DEPLOY_CPU, settings.DEPLOY_MEMORY)


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


def test_every_task_waits_for_validation_and_none_is_conditional(compiled):
    """validate-parameters runs first on every pipeline parameter; no dsl.If, no artifact dsl.OneOf."""
    _, spec, _ = compiled
    tasks = spec.root.dag.tasks
    check = tasks["validate-parameters-op"]
    assert not check.dependent_tasks and not check.retry_policy.max_retry_count
    assert set(check.inputs.parameters) == set(parameter_defaults(compiled[0]))
    for name, task in tasks.items():
        assert name == "validate-parameters-op" or "validate-parameters-op" in task.dependent_tasks, name
        assert not task.trigger_policy.condition, name
    assert set(spec.components) == {f"comp-{task}" for task in tasks}  # no condition sub-DAGs
    switches = {"finetune-op": "run_finetune", "train-scratch-op": "run_scratch_baseline"}
    for task, switch in switches.items():
        assert tasks[task].inputs.parameters["enabled"].component_input_parameter == switch
    evaluate = tasks["evaluate-op"].inputs.artifacts
    assert {evaluate[k].task_output_artifact.producer_task for k in ("frozen_model", "finetuned_model",
                                                                       "scratch_model")} == {
        "train-frozen-op", "finetune-op", "train-scratch-op"}


@pytest.mark.parametrize("target", list(backends.TARGETS))
def test_each_target_states_and_needs_its_backend(tmp_path, target):
    path = compile_pipeline(tmp_path / "p.yaml", kfp_backend=target)
    spec, platform = validate_pipeline_yaml(path)
    minimum = backends.TARGETS[target]
    assert spec.pipeline_info.description.startswith(f"Needs a Kubeflow Pipelines backend {minimum} or newer")
    assert backends.required_backend(path) == minimum
    doc = list(yaml.safe_load_all(path.read_text()))[1]
    secrets = [s for ex in doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
               for s in ex["secretAsEnv"]]
    assert secrets and all(s["secretName"] == CREDENTIALS_SECRET for s in secrets)
    newer = {f for s in secrets for f in backends.NEWER_SECRET_FIELDS if f in s}
    assert newer == (set(backends.NEWER_SECRET_FIELDS) if target == backends.DEFAULT_TARGET else set())


def test_required_backend_sees_an_artifact_oneof(tmp_path):
    """A pipeline that selects among artifacts (what the pipeline did before) needs the 2.17.0 backend."""
    path = tmp_path / "oneof.yaml"
    path.write_text(yaml.safe_dump({"root": {"dag": {"outputs": {"artifacts": {"m": {"artifactSelectors": [
        {"producerSubtask": "a", "outputArtifactKey": "m"}, {"producerSubtask": "b", "outputArtifactKey": "m"}]}}}}}}))
    assert backends.required_backend(path) == backends.ONEOF_ARTIFACTS_BACKEND
    assert not backends.meets("2.15.0", backends.required_backend(path)) and backends.meets("v2.17.1", "2.17.0")


def test_an_unknown_target_is_one_line_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"^--kfp-backend '2\.0' is not a compile target; choose one of 2\.15, 2\.5$"):
        compile_pipeline(tmp_path / "p.yaml", kfp_backend="2.0")
