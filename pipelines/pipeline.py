"""The KFP pipeline `transfer-learning-image-classifier` (docs/DESIGN.md "Flow", §7).

validate-parameters -> listing-fingerprint -> ingest -> preprocess -> tune -> train_frozen -> finetune
                                                                  \\-> train_scratch          -> evaluate -> register -> deploy

validate-parameters checks every parameter first (tlpipe.pipelines.validation), so a bad value fails the run
in seconds. A stage switched off (run_finetune / run_scratch_baseline false) still runs, as a task that only
writes its placeholder `model`, so evaluate always receives three model artifacts: no dsl.If, no dsl.OneOf.
Likewise the deploy task always runs; with deploy=off it returns at once without touching the cluster.
Images come from one ImageSettings object; credentials from the Kubernetes Secret CREDENTIALS_SECRET
(kfp-kubernetes use_secret_as_env), never from the YAML. The pipeline run id reaches the steps as $KFP_RUN_ID
from the pod label `pipeline/runid`, not as a parameter, so that it does not defeat caching.
"""

import inspect
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Metrics

from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.components.common.settings import ALL_ENV_VARS, CREDENTIALS_SECRET
from tlpipe.components.deploy.component import deploy_op
from tlpipe.components.deploy.params import DeployParams
from tlpipe.components.evaluate.component import evaluate_op
from tlpipe.components.evaluate.params import EvaluateParams
from tlpipe.components.ingest.component import ingest_op, listing_fingerprint_op
from tlpipe.components.ingest.params import IngestParams
from tlpipe.components.preprocess.component import preprocess_op
from tlpipe.components.preprocess.params import PreprocessParams
from tlpipe.components.register.component import register_op
from tlpipe.components.register.params import RegisterParams
from tlpipe.components.train.component import finetune_op, train_frozen_op, train_scratch_op, tune_op
from tlpipe.components.train.params import TrainParams, TuneParams
from tlpipe.pipelines import backends, validation
from tlpipe.pipelines.settings import DEPLOY_CPU, DEPLOY_MEMORY, ImageSettings, ResourceSettings

PIPELINE_NAME = "transfer-learning-image-classifier"
RUN_ID_LABEL = "metadata.labels['pipeline/runid']"
TRAINING_STEPS = ("tune", "train-frozen", "finetune", "train-scratch")  # on the training resources (and GPU)


class PipelineOutputs(NamedTuple):
    """What a run returns: the tune step's choice, the chosen stage, the registry outcome, the comparison
    metrics and report."""

    tune_choice: str
    best_stage: str
    model_version: str
    promoted: bool
    decision: str
    metrics: Metrics
    report: HTML


def validate_parameters_op(
    data_uri: str, num_classes: int, image_size: int, batch_size: int, epochs: int, learning_rate: float,
    unfreeze_layers: int, finetune_epochs: int, finetune_learning_rate: float, backbone: str, alpha: float,
    weights: str, augment: bool, feature_cache: str, weight_decay: float, label_smoothing: float,
    early_stopping_patience: int, early_stopping_monitor: str, use_class_weights: bool, seed: int, tune: str,
    tune_trials: int, tune_timeout_s: float, tune_space: str, tune_finetune_trials: int,
    tune_finetune_timeout_s: float, group_pattern: str, dedupe: str, near_duplicate_method: str,
    near_duplicate_similarity: float, allow_similar_class_names: bool, resize_mode: str, spark_backend: str,
    spark_options: dict, run_finetune: bool, run_scratch_baseline: bool, selection_metric: str, top_k: int,
    registered_model_name: str, min_improvement: float, experiment: str, deploy: str, inference_service: str,
    deploy_namespace: str, deployment_mode: str, canary_traffic_percent: int, ready_timeout_s: int,
):
    """Check every pipeline parameter before any work starts; a bad one fails here, named in one line.

    (The Args are the pipeline's own: build_pipeline copies them from the pipeline's docstring.)
    """
    parameters = dict(locals())
    from tlpipe.pipelines.validation import validate_parameters

    validate_parameters(parameters, check_files=False)


def _args_section(docstring: str) -> str:
    """The `Args:` section of a Google-style docstring."""
    text = inspect.cleandoc(docstring)
    return text[text.index("Args:"):text.index("Returns:")].rstrip()


def build_pipeline(images: ImageSettings | None = None, resources: ResourceSettings | None = None,
                   kfp_backend: str = backends.DEFAULT_TARGET):
    """The pipeline function: every step's image from `images`, CPU/memory/GPU from `resources`, the
    Kubernetes config in the shape the KFP backends of compile target `kfp_backend` accept (pipelines/backends.py)."""
    images = images or ImageSettings()
    resources = resources or ResourceSettings()
    backends.check_target(kfp_backend)
    gpu = resources.gpu

    def step(fn, name: str):
        on_gpu = gpu and name in TRAINING_STEPS  # evaluate/register stay on the CPU image
        return dsl.component(fn, base_image=images.for_step(name, gpu=on_gpu), install_kfp_package=False)

    fingerprint = step(listing_fingerprint_op, "ingest")
    ingest = step(ingest_op, "ingest")
    preprocess = step(preprocess_op, "preprocess")
    tuner = step(tune_op, "tune")
    train_frozen = step(train_frozen_op, "train-frozen")
    finetune = step(finetune_op, "finetune")
    train_scratch = step(train_scratch_op, "train-scratch")
    evaluate = step(evaluate_op, "evaluate")
    register = step(register_op, "register")
    deployer = step(deploy_op, "deploy")

    def connected(task, name: str, cache: bool = True, retries: int = 0):
        """Credentials from the Secret, run id from the pod label, display name, caching and retries."""
        kubernetes.use_secret_as_env(task, secret_name=CREDENTIALS_SECRET,
                                     secret_key_to_env={k: k for k in ALL_ENV_VARS})
        kubernetes.use_field_path_as_env(task, env_name="KFP_RUN_ID", field_path=RUN_ID_LABEL)
        task.platform_config["kubernetes"] = backends.for_target(task.platform_config["kubernetes"], kfp_backend)
        task.set_display_name(name).set_caching_options(enable_caching=cache).after(checked)
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

    def transfer_learning_image_classifier(
        data_uri: str = validation.DEFAULT_DATA_URI,
        num_classes: int = IngestParams.expected_num_classes,
        image_size: int = PreprocessParams.image_size,
        batch_size: int = TrainParams.batch_size,
        epochs: int = TrainParams.epochs,
        learning_rate: float = TrainParams.learning_rate,
        unfreeze_layers: int = TrainParams.unfreeze_layers,
        finetune_epochs: int = TrainParams.finetune_epochs,
        finetune_learning_rate: float = TrainParams.finetune_learning_rate,
        backbone: str = TrainParams.backbone,
        alpha: float = TrainParams.alpha,
        weights: str = TrainParams.weights,
        augment: bool = TrainParams.augment,
        feature_cache: str = TrainParams.feature_cache,
        weight_decay: float = TrainParams.weight_decay,
        label_smoothing: float = TrainParams.label_smoothing,
        early_stopping_patience: int = TrainParams.early_stopping_patience,
        early_stopping_monitor: str = TrainParams.early_stopping_monitor,
        use_class_weights: bool = TrainParams.use_class_weights,
        seed: int = TrainParams.seed,
        tune: str = TuneParams.tune,
        tune_trials: int = TuneParams.tune_trials,
        tune_timeout_s: float = TuneParams.tune_timeout_s,
        tune_space: str = TuneParams.tune_space,
        tune_finetune_trials: int = TuneParams.tune_finetune_trials,
        tune_finetune_timeout_s: float = TuneParams.tune_finetune_timeout_s,
        group_pattern: str = IngestParams.group_pattern,
        dedupe: str = IngestParams.dedupe,
        near_duplicate_method: str = IngestParams.near_duplicate_method,
        near_duplicate_similarity: float = IngestParams.near_duplicate_similarity,
        allow_similar_class_names: bool = IngestParams.allow_similar_class_names,
        resize_mode: str = PreprocessParams.resize_mode,
        spark_backend: str = PreprocessParams.spark_backend,
        spark_options: dict = {},  # noqa: B006 - a KFP struct parameter default (PreprocessParams'), never mutated
        run_finetune: bool = True,
        run_scratch_baseline: bool = True,
        selection_metric: str = EvaluateParams.selection_metric,
        top_k: int = EvaluateParams.top_k,
        registered_model_name: str = RegisterParams.registered_model_name,
        min_improvement: float = RegisterParams.min_improvement,
        experiment: str = DEFAULT_EXPERIMENT,
        deploy: str = DeployParams.deploy,
        inference_service: str = DeployParams.inference_service,
        deploy_namespace: str = DeployParams.namespace,
        deployment_mode: str = DeployParams.deployment_mode,
        canary_traffic_percent: int = DeployParams.canary_traffic_percent,
        ready_timeout_s: int = DeployParams.ready_timeout_s,
    ) -> PipelineOutputs:
        """S3 images -> Spark preprocessing -> transfer learning -> evaluation -> MLflow registry -> KServe.

        Chooses the frozen stage's recipe (tune: Optuna, grouped cross-validation on train+val; with tune=all
        the fine-tuning's too), trains a frozen-backbone model with it, fine-tunes it and trains a from-scratch baseline beside them on the
        same data, scores all three on the test split and registers the best as a model version, moving the
        `champion` alias only when it beats the current champion; with deploy=kserve, serves the champion
        (the challenger as canary) from a KServe InferenceService.

        Args:
            data_uri: s3://bucket/prefix of the images, one folder per class under the prefix.
            num_classes: the number of classes the data must have (ingest fails otherwise); 0: as many as the
                data has.
            image_size: side in pixels the images are resized to for training.
            batch_size: training batch size of every stage.
            epochs: epochs of the scratch stage, and of the frozen stage with tune=off (early stopping may end
                them sooner; a search chooses the frozen stage's own).
            learning_rate: Adam learning rate of the scratch stage, and of the frozen stage with tune=off.
            unfreeze_layers: how many of the backbone's last layers fine-tuning unfreezes (BatchNorm stays frozen),
                unless tune=all chose it.
            finetune_epochs: epochs of the fine-tuning stage (with tune=all: of a fine-tuning trial at most; the
                stage then trains the chosen trial's best epoch count).
            finetune_learning_rate: Adam learning rate of the fine-tuning stage, unless tune=all chose it.
            backbone: MobileNetV2, ResNet50 or EfficientNetB0 (keras.applications).
            alpha: width multiplier of MobileNetV2 (must match the weights).
            weights: imagenet, or a path / s3:// URI of a .weights.h5 file or a backbone .keras file.
            augment: random rotation, shift, flip, zoom and shear of the training images (the frozen stage's
                with tune=off, the fine-tuning's unless tune=all chose).
            feature_cache: frozen stage on cached backbone features with tune=off: off, on, flips, or augmented:K
                (K augmented views).
            weight_decay: AdamW decoupled weight decay of the scratch stage, and of the frozen stage with
                tune=off (0: Adam).
            label_smoothing: label smoothing of the scratch stage, and of the frozen stage with tune=off, in [0, 1).
            early_stopping_patience: epochs without improvement before a stage stops; 0 turns it off.
            early_stopping_monitor: the val metric that picks the best epoch: val_loss or val_accuracy.
            use_class_weights: weight the loss by inverse class frequency.
            seed: seed of the training stages and of the tune search (the split is fixed by the data, not by this).
            tune: frozen (search the frozen stage's head, dropout, learning rate, weight decay, label smoothing
                and feature cache on cached train+val features; the test split is never read), all (then also
                the fine-tuning stage's unfrozen layers, learning rate, augmentation and epochs, on one grouped
                fold of train+val; needs run_finetune) or off (the stages train with the values given here).
            tune_trials: trials of the frozen search.
            tune_timeout_s: wall-clock budget of the frozen search in seconds; 0: none.
            tune_space: JSON replacing entries of the search spaces (components/train/README.md), e.g.
                {"feature_cache": "on"} or {"unfreeze_layers": {"choices": [30, 60]}}; empty: the default spaces.
            tune_finetune_trials: trials of the fine-tuning search (tune=all).
            tune_finetune_timeout_s: wall-clock budget of the fine-tuning search in seconds (tune=all); 0: none.
            group_pattern: regex on the object key whose first group names a source (e.g. a video id): all its
                images land in one split.
            dedupe: duplicate handling in ingest: off, exact (same bytes) or near (also near-duplicates, found
                by near_duplicate_method).
            near_duplicate_method: phash (64-bit hash: flips, rotations, re-encodings) or dct (also rescaled
                and centre-cropped copies; whitened DCT of centre crops, cosine).
            near_duplicate_similarity: dct only: min cosine similarity of near-duplicates (0.95: 26
                cross-video pairs of 540k on fish-egu2017); the ingest report shows the weakest merged pairs.
            allow_similar_class_names: keep class folders that differ only by case or surrounding spaces
                (cat, cat , Cat) as separate classes (with a warning); by default ingest fails on them.
            resize_mode: squash, center-crop or pad.
            spark_backend: where the preprocessing Spark job runs: local, dataproc or k8s.
            spark_options: options of the Spark backend (components/preprocess/README.md lists them).
            run_finetune: train the fine-tuning stage (false: its task only writes a placeholder that evaluate
                lists as skipped).
            run_scratch_baseline: train the from-scratch baseline (false: likewise).
            selection_metric: the val metric that chooses the best stage (e.g. accuracy, macro_f1, log_loss);
                test metrics are only reported.
            top_k: k of the top-k accuracy.
            registered_model_name: the MLflow registered model that gets the new version.
            min_improvement: how much the new model must beat the champion by to become champion.
            experiment: the MLflow experiment of the runs.
            deploy: off (no serving; the deploy task does nothing) or kserve (create or patch a KServe
                InferenceService serving the registry's champion and wait until it is Ready; components/deploy).
            inference_service: the InferenceService's name (a DNS label).
            deploy_namespace: the Kubernetes namespace of the InferenceService (a DNS label); manifests/tlpipe/rbac
                lets the pipeline's account deploy in tlpipe.
            deployment_mode: KServe's deployment mode: RawDeployment (a Deployment) or Serverless (Knative).
            canary_traffic_percent: the challenger's share of the traffic, 0-99, while it is not the champion;
                0: the champion only. Needs deployment_mode Serverless.
            ready_timeout_s: seconds to wait for the InferenceService to become Ready; when it fails or times
                out, the previous spec is put back and the task fails with the predictor's error.

        Returns:
            tune_choice (the tune step's choice in one line), best_stage, model_version, promoted and decision of the registry gate, the comparison metrics and
            the HTML report.
        """
        nonlocal checked
        checked = validate(**{name: value for name, value in locals().items() if name in validation.PARAMETERS})
        checked.set_display_name("validate-parameters")
        listing = connected(fingerprint(data_uri=data_uri), "listing-fingerprint", cache=False)
        manifest = connected(ingest(
            data_uri=data_uri, listing_fingerprint=listing.output, expected_num_classes=num_classes,
            group_pattern=group_pattern, dedupe=dedupe, near_duplicate_method=near_duplicate_method,
            near_duplicate_similarity=near_duplicate_similarity, allow_similar_class_names=allow_similar_class_names,
            experiment=experiment), "ingest").outputs["manifest"]
        prep = sized(connected(preprocess(
            manifest=manifest, image_size=image_size, resize_mode=resize_mode, spark_backend=spark_backend,
            spark_options=spark_options, spark_image=images.for_step("preprocess"), experiment=experiment),
            "preprocess", retries=2), resources.preprocess_cpu,
            resources.preprocess_memory)
        examples = prep.outputs["examples"]

        common = dict(examples=examples, batch_size=batch_size, seed=seed, experiment=experiment)
        stopping = dict(early_stopping_patience=early_stopping_patience, early_stopping_monitor=early_stopping_monitor,
                        use_class_weights=use_class_weights)
        searched = trainer(tuner(
            manifest=manifest, backbone=backbone, alpha=alpha, weights=weights, epochs=epochs,
            learning_rate=learning_rate, augment=augment, feature_cache=feature_cache, weight_decay=weight_decay,
            label_smoothing=label_smoothing, tune=tune, tune_trials=tune_trials, tune_timeout_s=tune_timeout_s,
            tune_space=tune_space, tune_finetune_trials=tune_finetune_trials,
            tune_finetune_timeout_s=tune_finetune_timeout_s, finetune_epochs=finetune_epochs,
            finetune_learning_rate=finetune_learning_rate, unfreeze_layers=unfreeze_layers, **stopping, **common),
            "tune")
        frozen = trainer(train_frozen(
            tune_result=searched.outputs["tune_result"], backbone=backbone, alpha=alpha, weights=weights,
            **stopping, **common), "train-frozen")
        tuned = trainer(finetune(
            frozen_model=frozen.outputs["model"], tune_result=searched.outputs["tune_result"],
            finetune_epochs=finetune_epochs, unfreeze_layers=unfreeze_layers,
            finetune_learning_rate=finetune_learning_rate, augment=augment, enabled=run_finetune, **stopping,
            **common), "finetune")
        scratch = trainer(train_scratch(
            backbone=backbone, alpha=alpha, epochs=epochs, learning_rate=learning_rate, augment=augment,
            weight_decay=weight_decay, label_smoothing=label_smoothing, enabled=run_scratch_baseline, **stopping,
            **common), "train-scratch")

        evaluation = sized(connected(evaluate(
            examples=examples, frozen_model=frozen.outputs["model"], finetuned_model=tuned.outputs["model"],
            scratch_model=scratch.outputs["model"], tune_result=searched.outputs["tune_result"],
            selection_metric=selection_metric, top_k=top_k, experiment=experiment), "evaluate", retries=2), resources.evaluate_cpu, resources.evaluate_memory)
        # The registry is outside the pipeline: always run the gate (it is idempotent), never serve it from cache.
        registration = sized(connected(register(
            best_model=evaluation.outputs["best_model"], examples=examples, manifest=manifest,
            registered_model_name=registered_model_name, min_improvement=min_improvement,
            experiment=experiment), "register", cache=False), resources.register_cpu, resources.register_memory)
        # The cluster is outside the pipeline too: never from cache; deploy=off returns at once.
        sized(connected(deployer(
            model_version=registration.outputs["model_version"], registered_model_name=registered_model_name,
            deploy=deploy, inference_service=inference_service, namespace=deploy_namespace,
            deployment_mode=deployment_mode, canary_traffic_percent=canary_traffic_percent,
            ready_timeout_s=ready_timeout_s), "deploy", cache=False), DEPLOY_CPU, DEPLOY_MEMORY)
        return PipelineOutputs(tune_choice=searched.outputs["Output"], best_stage=evaluation.outputs["best_stage"],
                       model_version=registration.outputs["model_version"],
                       promoted=registration.outputs["promoted"], decision=registration.outputs["decision"],
                       metrics=evaluation.outputs["metrics"], report=evaluation.outputs["report"])

    validate_parameters_op.__doc__ = (inspect.cleandoc(validate_parameters_op.__doc__).split("\n")[0] + "\n\n"
                                      + _args_section(transfer_learning_image_classifier.__doc__))
    validate = dsl.component(validate_parameters_op, base_image=images.for_step("validate-parameters"),
                             install_kfp_package=False)
    checked = None  # the validate-parameters task, set when the pipeline is traced; every other task follows it
    description = (f"Needs a Kubeflow Pipelines backend {backends.TARGETS[kfp_backend]} or newer (compile target "
                   f"{kfp_backend}). " + inspect.cleandoc(transfer_learning_image_classifier.__doc__).split("Args:")[0])
    return dsl.pipeline(name=PIPELINE_NAME, description=description.strip())(transfer_learning_image_classifier)


def pipeline_parameters() -> dict:
    """The pipeline's parameters and their defaults (from the pipeline function, without compiling)."""
    return {name: spec.default for name, spec in build_pipeline().component_spec.inputs.items()}
