"""The KFP pipeline `transfer-learning-image-classifier` (DESIGN.md "Flow") and its compilation.

ingest -> preprocess -> train_frozen -> finetune (dsl.If run_finetune)
                     \\-> train_scratch (dsl.If run_scratch_baseline)  -> evaluate -> register

Images come from one ImageSettings object; credentials from the Kubernetes Secret CREDENTIALS_SECRET
(kfp-kubernetes use_secret_as_env), never from the YAML. The pipeline run id reaches the steps as $KFP_RUN_ID
from the pod label `pipeline/runid`, not as a parameter, so that it does not defeat caching.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Metrics, Model, Output

from tlpipe.components.common.settings import ALL_ENV_VARS, CREDENTIALS_SECRET
from tlpipe.components.evaluate.component import evaluate_op
from tlpipe.components.ingest.component import ingest_op, listing_fingerprint_op
from tlpipe.components.preprocess.component import preprocess_op
from tlpipe.components.register.component import register_op
from tlpipe.components.train.component import finetune_op, train_frozen_op, train_scratch_op
from tlpipe.pipelines.settings import ImageSettings, ResourceSettings

PIPELINE_NAME = "transfer-learning-image-classifier"
RUN_ID_LABEL = "metadata.labels['pipeline/runid']"
TRAINING_STEPS = ("train-frozen", "finetune", "train-scratch")


class PipelineOutputs(NamedTuple):
    """What a run returns: the chosen stage, the registry outcome, the comparison metrics and report."""

    best_stage: str
    model_version: str
    promoted: bool
    decision: str
    metrics: Metrics
    report: HTML


def skip_stage_op(stage: str, reason: str, model: Output[Model]):
    """Placeholder `model` of a stage switched off: `skipped.json`, no model.keras (evaluate lists it)."""
    import json
    import os

    os.makedirs(model.path, exist_ok=True)
    with open(os.path.join(model.path, "skipped.json"), "w") as fh:
        json.dump({"stage": stage, "reason": reason}, fh)
    model.metadata.update({"stage": stage, "skipped": True})


def build_pipeline(images: ImageSettings | None = None, resources: ResourceSettings | None = None):
    """The pipeline function: every step's image from `images`, CPU/memory/GPU of the heavy steps from `resources`."""
    images = images or ImageSettings()
    resources = resources or ResourceSettings()
    gpu = resources.gpu

    def step(fn, name: str):
        on_gpu = gpu and name in TRAINING_STEPS  # evaluate/register stay on the CPU image
        return dsl.component(fn, base_image=images.for_step(name, gpu=on_gpu), install_kfp_package=False)

    fingerprint = step(listing_fingerprint_op, "ingest")
    ingest = step(ingest_op, "ingest")
    preprocess = step(preprocess_op, "preprocess")
    train_frozen = step(train_frozen_op, "train-frozen")
    finetune = step(finetune_op, "finetune")
    train_scratch = step(train_scratch_op, "train-scratch")
    skip_stage = step(skip_stage_op, "skip-stage")
    evaluate = step(evaluate_op, "evaluate")
    register = step(register_op, "register")

    def connected(task, name: str, cache: bool = True, retries: int = 0):
        """Credentials from the Secret, run id from the pod label, display name, caching and retries."""
        kubernetes.use_secret_as_env(task, secret_name=CREDENTIALS_SECRET,
                                     secret_key_to_env={k: k for k in ALL_ENV_VARS})
        kubernetes.use_field_path_as_env(task, env_name="KFP_RUN_ID", field_path=RUN_ID_LABEL)
        task.set_display_name(name).set_caching_options(enable_caching=cache)
        if retries:
            task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2)
        return task

    def sized(task, cpu: str, memory: str):
        return task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)

    def trainer(task, name: str):
        sized(connected(task, name, retries=2), resources.train_cpu, resources.train_memory)
        if gpu:
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        return task

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="S3 images -> Spark preprocessing -> transfer learning (frozen, fine-tuned, "
                              "scratch baseline) -> evaluation -> MLflow registry with a champion/challenger gate")
    def transfer_learning_image_classifier(
        data_uri: str = "s3://tlpipe/datasets/fish",
        num_classes: int = 9,
        image_size: int = 224,
        batch_size: int = 32,
        epochs: int = 10,
        learning_rate: float = 1e-3,
        unfreeze_layers: int = 50,
        finetune_epochs: int = 10,
        finetune_learning_rate: float = 1e-5,
        backbone: str = "MobileNetV2",
        alpha: float = 1.0,
        weights: str = "imagenet",
        augment: bool = True,
        feature_cache: str = "off",
        early_stopping_patience: int = 3,
        early_stopping_monitor: str = "val_loss",
        use_class_weights: bool = False,
        seed: int = 42,
        group_pattern: str = "",
        dedupe: str = "near",
        resize_mode: str = "squash",
        spark_backend: str = "local",
        spark_options: dict = {},  # noqa: B006 - a KFP struct parameter default, never mutated
        run_finetune: bool = True,
        run_scratch_baseline: bool = True,
        selection_metric: str = "accuracy",
        top_k: int = 3,
        registered_model_name: str = "fish-classifier",
        min_improvement: float = 0.0,
        experiment: str = "fish-classification",
    ) -> PipelineOutputs:
        listing = connected(fingerprint(data_uri=data_uri), "listing-fingerprint", cache=False)
        manifest = connected(ingest(
            data_uri=data_uri, listing_fingerprint=listing.output, expected_num_classes=num_classes,
            group_pattern=group_pattern, dedupe=dedupe), "ingest").outputs["manifest"]
        prep = sized(connected(preprocess(
            manifest=manifest, image_size=image_size, resize_mode=resize_mode, spark_backend=spark_backend,
            spark_options=spark_options), "preprocess", retries=2), resources.preprocess_cpu,
            resources.preprocess_memory)
        examples = prep.outputs["examples"]

        common = dict(examples=examples, batch_size=batch_size, augment=augment, seed=seed,
                      early_stopping_patience=early_stopping_patience, early_stopping_monitor=early_stopping_monitor,
                      use_class_weights=use_class_weights, experiment=experiment)
        frozen = trainer(train_frozen(
            backbone=backbone, alpha=alpha, weights=weights, epochs=epochs, learning_rate=learning_rate,
            feature_cache=feature_cache, **common), "train-frozen")
        with dsl.If(run_finetune == True, "finetune"):  # noqa: E712 - a KFP condition, not a Python test
            tuned = trainer(finetune(
                frozen_model=frozen.outputs["model"], epochs=finetune_epochs, unfreeze_layers=unfreeze_layers,
                finetune_learning_rate=finetune_learning_rate, **common), "finetune")
        with dsl.Else():
            tuned_skipped = skip_stage(stage="finetune", reason="run_finetune=False").set_display_name(
                "finetune-skipped")
        with dsl.If(run_scratch_baseline == True, "scratch-baseline"):  # noqa: E712
            scratch = trainer(train_scratch(
                backbone=backbone, alpha=alpha, epochs=epochs, learning_rate=learning_rate, **common),
                "train-scratch")
        with dsl.Else():
            scratch_skipped = skip_stage(stage="scratch", reason="run_scratch_baseline=False").set_display_name(
                "scratch-skipped")

        evaluation = connected(evaluate(
            examples=examples, frozen_model=frozen.outputs["model"],
            finetuned_model=dsl.OneOf(tuned.outputs["model"], tuned_skipped.outputs["model"]),
            scratch_model=dsl.OneOf(scratch.outputs["model"], scratch_skipped.outputs["model"]),
            selection_metric=selection_metric, top_k=top_k, experiment=experiment), "evaluate", retries=2)
        # The registry is outside the pipeline: always run the gate (it is idempotent), never serve it from cache.
        registration = connected(register(
            best_model=evaluation.outputs["best_model"], examples=examples, manifest=manifest,
            registered_model_name=registered_model_name, min_improvement=min_improvement,
            experiment=experiment), "register", cache=False)
        return PipelineOutputs(best_stage=evaluation.outputs["best_stage"],
                       model_version=registration.outputs["model_version"],
                       promoted=registration.outputs["promoted"], decision=registration.outputs["decision"],
                       metrics=evaluation.outputs["metrics"], report=evaluation.outputs["report"])

    return transfer_learning_image_classifier


def pipeline_parameters() -> dict:
    """The pipeline's parameters and their defaults (from the pipeline function, without compiling)."""
    return {name: spec.default for name, spec in build_pipeline().component_spec.inputs.items()}
