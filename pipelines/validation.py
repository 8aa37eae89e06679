"""The one schema of the pipeline's parameters: types, defaults, ranges and choices, checked before any work.

`tlpipe local`, `tlpipe run` and `tlpipe compile` check their `-p` values with it before anything starts,
and the pipeline's first task (`validate-parameters`) runs it on the values a run was launched with (from the
KFP dashboard too), so a bad value fails in seconds naming the parameter instead of after minutes of
retries. The ranges and choices are the steps' own (their params.py dataclasses and checks); this module
only maps a step's complaint to the pipeline parameter. Standard library only at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.components.deploy.params import DeployParams
from tlpipe.components.evaluate.params import EvaluateParams
from tlpipe.components.ingest.params import IngestParams
from tlpipe.components.preprocess.params import PreprocessParams, check_backend, check_resize_mode
from tlpipe.components.register.params import RegisterParams
from tlpipe.components.train.params import BACKBONES, TrainParams, TuneParams

DEFAULT_DATA_URI = "s3://tlpipe/datasets/fish"
NO_WEIGHTS = ("", "none", "None")  # random initialisation (what train.model.resolve_weights reads as None)


class InvalidParameterError(ValueError):
    """A pipeline parameter of the wrong type or out of range; its message is one line naming it."""


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter: its type, its default and the owner's check (raises ValueError: the reason)."""

    type: type
    default: object
    check: Callable[[object, dict], None] | None = None


def _ingest(field: str):
    return lambda value, params: IngestParams(**{field: value})


def _train(field: str, stage: str = "train_frozen"):
    return lambda value, params: TrainParams(**{field: value}).validate(stage)


def _tune(field: str):
    return lambda value, params: TuneParams(**{field: value}).validate()


def _tune_mode(value, params) -> None:
    TuneParams(tune=value).validate()
    if value == "all" and not params["run_finetune"]:
        raise ValueError("tune=all searches the fine-tuning stage: it needs run_finetune=true (or use tune=frozen)")


def _tune_space(value, params) -> None:
    TuneParams(tune_space=value).space()


def _evaluate(field: str):
    return lambda value, params: EvaluateParams(**{field: value}).validate()


def _register(field: str):
    return lambda value, params: RegisterParams(**{field: value}).validate()


def _deploy(field: str):
    return lambda value, params: DeployParams(**{field: value}).validate()


def _canary_traffic_percent(value, params) -> None:
    """Checked even with deploy=off: the deploy task checks it then too, at the end of the run."""
    DeployParams(canary_traffic_percent=value, deployment_mode=params["deployment_mode"]).validate()


def _image_size(value, params) -> None:
    from tlpipe.components.preprocess.job import JobConfig

    JobConfig(manifest="", output="", image_size=value).validate()


def _data_uri(value, params) -> None:
    from tlpipe.components.common import s3 as s3lib

    s3lib.split_uri(value)


def _backbone(value, params) -> None:
    if value not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}")


def _alpha(value, params) -> None:
    if not value > 0:
        raise ValueError("alpha (MobileNetV2's width multiplier) must be > 0, e.g. 0.35, 0.5, 0.75, 1.0, 1.3, 1.4")
    if value != 1.0 and params["backbone"] != "MobileNetV2":
        raise ValueError(f"alpha applies only to MobileNetV2; backbone {params['backbone']} needs alpha=1.0")


def _feature_cache(value, params) -> None:
    TrainParams(feature_cache=value, augment=params["augment"]).validate("train_frozen")


def _unfreeze_layers(value, params) -> None:
    if value < 0:
        raise ValueError("unfreeze_layers must be >= 0")


def _weights(value, params) -> None:
    """imagenet, none, an s3:// URI, or (where files are checked) a local file that exists."""
    if value in ("imagenet", *NO_WEIGHTS):
        return
    if value.startswith("s3://"):
        _data_uri(value, params)
    elif params["_check_files"] and not Path(value).expanduser().is_file():
        raise ValueError("weights is imagenet, none, an s3:// URI or an existing .weights.h5 / backbone .keras "
                         "file; no such file here")


def _name(value, params) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


PARAMETERS: dict[str, Parameter] = {
    "data_uri": Parameter(str, DEFAULT_DATA_URI, _data_uri),
    "num_classes": Parameter(int, IngestParams.expected_num_classes, _ingest("expected_num_classes")),
    "image_size": Parameter(int, PreprocessParams.image_size, _image_size),
    "batch_size": Parameter(int, TrainParams.batch_size, _train("batch_size")),
    "epochs": Parameter(int, TrainParams.epochs, _train("epochs")),
    "learning_rate": Parameter(float, TrainParams.learning_rate, _train("learning_rate")),
    "unfreeze_layers": Parameter(int, TrainParams.unfreeze_layers, _unfreeze_layers),
    "finetune_epochs": Parameter(int, TrainParams.finetune_epochs, _train("finetune_epochs", "finetune")),
    "finetune_learning_rate": Parameter(float, TrainParams.finetune_learning_rate,
                                        _train("finetune_learning_rate", "finetune")),
    "backbone": Parameter(str, TrainParams.backbone, _backbone),
    "alpha": Parameter(float, TrainParams.alpha, _alpha),
    "weights": Parameter(str, TrainParams.weights, _weights),
    "augment": Parameter(bool, TrainParams.augment),
    "feature_cache": Parameter(str, TrainParams.feature_cache, _feature_cache),
    "weight_decay": Parameter(float, TrainParams.weight_decay, _train("weight_decay")),
    "label_smoothing": Parameter(float, TrainParams.label_smoothing, _train("label_smoothing")),
    "early_stopping_patience": Parameter(int, TrainParams.early_stopping_patience),
    "early_stopping_monitor": Parameter(str, TrainParams.early_stopping_monitor, _train("early_stopping_monitor")),
    "use_class_weights": Parameter(bool, TrainParams.use_class_weights),
    "seed": Parameter(int, TrainParams.seed),
    "tune": Parameter(str, TuneParams.tune, _tune_mode),
    "tune_trials": Parameter(int, TuneParams.tune_trials, _tune("tune_trials")),
    "tune_timeout_s": Parameter(float, TuneParams.tune_timeout_s, _tune("tune_timeout_s")),
    "tune_space": Parameter(str, TuneParams.tune_space, _tune_space),
    "tune_finetune_trials": Parameter(int, TuneParams.tune_finetune_trials, _tune("tune_finetune_trials")),
    "tune_finetune_timeout_s": Parameter(float, TuneParams.tune_finetune_timeout_s, _tune("tune_finetune_timeout_s")),
    "group_pattern": Parameter(str, IngestParams.group_pattern, _ingest("group_pattern")),
    "dedupe": Parameter(str, IngestParams.dedupe, _ingest("dedupe")),
    "near_duplicate_method": Parameter(str, IngestParams.near_duplicate_method, _ingest("near_duplicate_method")),
    "near_duplicate_similarity": Parameter(float, IngestParams.near_duplicate_similarity,
                                           _ingest("near_duplicate_similarity")),
    "allow_similar_class_names": Parameter(bool, IngestParams.allow_similar_class_names),
    "resize_mode": Parameter(str, PreprocessParams.resize_mode, lambda value, params: check_resize_mode(value)),
    "spark_backend": Parameter(str, PreprocessParams.spark_backend, lambda value, params: check_backend(value)),
    "spark_options": Parameter(dict, {}),  # its keys are the backend's: the preprocess step checks them
    "run_finetune": Parameter(bool, True),
    "run_scratch_baseline": Parameter(bool, True),
    "selection_metric": Parameter(str, EvaluateParams.selection_metric, _evaluate("selection_metric")),
    "top_k": Parameter(int, EvaluateParams.top_k, _evaluate("top_k")),
    "registered_model_name": Parameter(str, RegisterParams.registered_model_name, _name),
    "min_improvement": Parameter(float, RegisterParams.min_improvement, _register("min_improvement")),
    "experiment": Parameter(str, DEFAULT_EXPERIMENT, _name),
    "deploy": Parameter(str, DeployParams.deploy, _deploy("deploy")),
    "inference_service": Parameter(str, DeployParams.inference_service, _deploy("inference_service")),
    "deploy_namespace": Parameter(str, DeployParams.namespace, _deploy("namespace")),
    "deployment_mode": Parameter(str, DeployParams.deployment_mode, _deploy("deployment_mode")),
    "canary_traffic_percent": Parameter(int, DeployParams.canary_traffic_percent, _canary_traffic_percent),
    "ready_timeout_s": Parameter(int, DeployParams.ready_timeout_s, _deploy("ready_timeout_s")),
}
TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", dict: "a JSON object"}


def defaults() -> dict:
    """Every pipeline parameter and its default."""
    return {name: p.default for name, p in PARAMETERS.items()}


def _coerce(value, kind: type):
    """`value` as `kind` (a whole number as int, an int as float, 'true'/'false' as bool), else a ValueError."""
    if isinstance(value, str) and kind is not str:  # typed as text (e.g. an environment or a form field)
        try:
            value = {"true": True, "false": False}[value.lower()] if kind is bool else float(value)
        except (KeyError, ValueError):
            raise ValueError(f"must be {TYPE_NAMES[kind]}") from None
    if isinstance(value, bool) != (kind is bool):
        raise ValueError(f"must be {TYPE_NAMES[kind]}")
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise ValueError(f"must be {TYPE_NAMES[kind]}")
    return value


def validate_parameters(params: dict, check_files: bool = True) -> dict:
    """`params` (pipeline parameter -> value) checked against the schema; returns them coerced to their types.

    The parameters not given are checked at their defaults (alpha goes with backbone, feature_cache with
    augment, canary_traffic_percent with deployment_mode). `check_files`: also check that a local `weights`
    path exists (off inside the pipeline, whose task may not see the files of the training image). Raises
    InvalidParameterError, one line: `parameter NAME=VALUE: what is allowed`.
    """
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidParameterError(f"unknown pipeline parameter {unknown[0]!r}; known: {', '.join(PARAMETERS)}")
    coerced = {}
    for name, value in params.items():
        try:
            coerced[name] = _coerce(value, PARAMETERS[name].type)
        except ValueError as exc:
            raise InvalidParameterError(f"parameter {name}={value!r}: {exc}") from None
    context = {**defaults(), **coerced, "_check_files": check_files}
    for name, parameter in PARAMETERS.items():
        if parameter.check is None:
            continue
        try:
            parameter.check(context[name], context)
        except ValueError as exc:
            raise InvalidParameterError(f"parameter {name}={params.get(name, context[name])!r}: {exc}") from None
    return coerced
