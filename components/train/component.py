"""KFP adapters of the tune step and the training stages: map artifacts and parameters onto train.tune and train.core.

Plain functions; the pipeline wraps them with dsl.component(fn, base_image=..., install_kfp_package=False)
and sets CPU/memory/GPU requests on the tasks. The defaults are literals (KFP embeds each function's source);
a test checks them against params.py. Where the output artifact lives in S3 (an s3:// pipeline root), the
per-epoch checkpoint is mirrored to `<model uri>/checkpoint`, so a retried (preempted) pod resumes after its
last finished epoch. A stage switched off (`enabled` false) writes only its placeholder `model` and imports
nothing heavy, so evaluate always receives three model artifacts.
"""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def tune_op(examples: Input[Dataset], manifest: Input[Dataset], tune_result: Output[Artifact],
            backbone: str = "MobileNetV2", alpha: float = 1.0, weights: str = "imagenet", batch_size: int = 32,
            epochs: int = 10, learning_rate: float = 1e-3, augment: bool = True, feature_cache: str = "off",
            weight_decay: float = 0.0, label_smoothing: float = 0.0, seed: int = 42, tune: str = "frozen",
            tune_trials: int = 20, tune_timeout_s: float = 90.0, tune_space: str = "",
            tune_finetune_trials: int = 4, tune_finetune_timeout_s: float = 900.0, finetune_epochs: int = 10,
            finetune_learning_rate: float = 1e-5, unfreeze_layers: int = 50, early_stopping_patience: int = 3,
            early_stopping_monitor: str = "val_loss", use_class_weights: bool = False,
            experiment: str = "fish-classification", kfp_run_id: str = "local",
            dense_units: list = [512, 256], dropouts: list = [0.5, 0.3]) -> str:  # noqa: B006 - KFP defaults
    """Choose the frozen stage's recipe (Optuna, grouped cross-validation on cached train+val features).

    tune=frozen searches head size, dropout, learning rate, weight decay, label smoothing and feature cache
    (the test split is never read); tune=all then searches the fine-tuning stage (unfrozen layers, learning
    rate, augmentation, epochs) on one grouped fold of train+val; tune=off passes the given values on.
    train-frozen trains with the `train_params` of the output, finetune with its `finetune_params` (tune=all),
    and the given values of what tune may choose are logged on the parent MLflow run (the choice as
    `tune.<name>`, each trial as a nested run).

    Args:
        examples: the `examples` artifact (its train and val splits).
        manifest: the `manifest` artifact of ingest: the images' split groups, kept whole in every fold.
        tune_result: the output: best_params.json (`train_params`, the choice's `line`, CV accuracy, trial
            counts) and the study's plots (docs/DESIGN.md §3a).
        backbone: the keras.applications backbone: MobileNetV2, ResNet50 or EfficientNetB0.
        alpha: MobileNetV2 width multiplier (1.0 for the other backbones).
        weights: imagenet, a local path or an s3:// URI of a .weights.h5 (stock backbone) or a backbone .keras.
        batch_size: images per batch (feature extraction and the trials' heads).
        epochs: train-frozen's epochs with tune=off (a search chooses its own).
        learning_rate: train-frozen's learning rate with tune=off.
        augment: train-frozen's augmentation with tune=off.
        feature_cache: train-frozen's feature cache with tune=off.
        weight_decay: train-frozen's AdamW weight decay with tune=off (0: Adam).
        label_smoothing: train-frozen's label smoothing with tune=off.
        seed: seed of the folds, the sampler and the trials.
        tune: off, frozen (the frozen-stage search) or all (and then the fine-tuning search).
        tune_trials: trials of the frozen study (finished, pruned or failed).
        tune_timeout_s: wall-clock budget of the frozen search in seconds; 0: none.
        tune_space: JSON replacing entries of the search spaces, e.g. {"feature_cache": "on"}.
        tune_finetune_trials: trials of the fine-tune study (tune=all).
        tune_finetune_timeout_s: wall-clock budget of the fine-tune search in seconds; 0: none.
        finetune_epochs: epochs of a fine-tune trial at most (tune=all).
        finetune_learning_rate: finetune's learning rate as given (logged on the parent run with tune=all).
        unfreeze_layers: finetune's unfrozen layers as given (logged on the parent run with tune=all).
        early_stopping_patience: the fine-tune trials' early stopping, as the finetune stage's (tune=all).
        early_stopping_monitor: the val metric that picks a fine-tune trial's kept epoch, as in the stage.
        use_class_weights: weight the fine-tune trials' loss by inverse class frequency, as in the stage.
        experiment: MLflow experiment of the pipeline's parent run.
        kfp_run_id: pipeline run whose parent MLflow run to nest under (local: $KFP_RUN_ID or "local").
        dense_units: units of the head's Dense layers with tune=off.
        dropouts: dropout rate after each Dense layer with tune=off.

    Returns:
        The choice in one line (what train-frozen trains with, and its CV accuracy after a search).
    """
    from tlpipe.components.train.params import TrainParams, TuneParams
    from tlpipe.components.train.tune import tune as search

    params = TuneParams(tune=tune, tune_trials=tune_trials, tune_timeout_s=tune_timeout_s, tune_space=tune_space,
                        tune_finetune_trials=tune_finetune_trials, tune_finetune_timeout_s=tune_finetune_timeout_s)
    train = TrainParams(backbone=backbone, alpha=alpha, weights=weights, batch_size=batch_size, epochs=epochs,
                        finetune_epochs=finetune_epochs, finetune_learning_rate=finetune_learning_rate,
                        unfreeze_layers=unfreeze_layers, early_stopping_patience=early_stopping_patience,
                        early_stopping_monitor=early_stopping_monitor, use_class_weights=use_class_weights,
                        learning_rate=learning_rate, augment=augment, feature_cache=feature_cache,
                        weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed,
                        dense_units=tuple(int(u) for u in dense_units), dropouts=tuple(float(d) for d in dropouts))
    best = search(examples.path, tune_result.path, params, train, manifest_dir=manifest.path, experiment=experiment,
                  kfp_run_id=kfp_run_id)
    tune_result.metadata.update({k: best[k] for k in ("tune", "cv_accuracy", "best_trial", "folds") if k in best})
    tune_result.metadata.update({f"trials_{k}": v for k, v in best.get("trials", {}).items()})
    return best["line"]


def train_frozen_op(examples: Input[Dataset], tune_result: Input[Artifact], model: Output[Model],
                    backbone: str = "MobileNetV2", alpha: float = 1.0, weights: str = "imagenet",
                    batch_size: int = 32, early_stopping_patience: int = 3, early_stopping_monitor: str = "val_loss",
                    use_class_weights: bool = False, seed: int = 42, experiment: str = "fish-classification",
                    kfp_run_id: str = "local") -> float:
    """Train a new classification head on a frozen pretrained backbone, with the recipe the tune step chose.

    The backbone runs in inference mode; the head is GAP -> Dense -> Dropout (per dense_units/dropouts) ->
    softmax. Epochs, learning rate, head, dropouts, weight decay, label smoothing, augmentation and feature
    cache are the `train_params` of `tune_result` (with tune=off: the pipeline's values). Writes the `model`
    artifact (docs/DESIGN.md §4) and logs a nested MLflow run.

    Args:
        examples: the `examples` artifact (TFRecord shards and schema.json) to train and validate on.
        tune_result: the tune step's output: its best_params.json says what to train with.
        model: the output `model` artifact: model.keras, class_indices.json, history.json, curves.png.
        backbone: the keras.applications backbone: MobileNetV2, ResNet50 or EfficientNetB0.
        alpha: MobileNetV2 width multiplier (1.0 for the other backbones).
        weights: imagenet, a local path or an s3:// URI of a .weights.h5 (stock backbone) or a backbone .keras.
        batch_size: images per training batch.
        early_stopping_patience: epochs without a gain of the monitored val metric before stopping; 0: off.
        early_stopping_monitor: val_loss or val_accuracy: the val metric that picks the best epoch.
        use_class_weights: weight the loss by inverse class frequency.
        seed: seed of weights initialisation, dropout, augmentation and shuffling.
        experiment: MLflow experiment of the pipeline's parent run.
        kfp_run_id: pipeline run whose parent MLflow run to nest under (local: $KFP_RUN_ID or "local").

    Returns:
        The final val accuracy of the best epoch's weights.
    """
    from tlpipe.components.common import tune_result as tuned
    from tlpipe.components.train import core
    from tlpipe.components.train.checkpoint import checkpoint_uri_for
    from tlpipe.components.train.params import TrainParams

    params = TrainParams(batch_size=batch_size, early_stopping_patience=early_stopping_patience,
                         early_stopping_monitor=early_stopping_monitor, use_class_weights=use_class_weights,
                         seed=seed, backbone=backbone, alpha=alpha,
                         weights=weights).tuned(tuned.read(tune_result.path)["train_params"])
    result = core.train_frozen(examples.path, model.path, params, experiment=experiment, kfp_run_id=kfp_run_id,
                               checkpoint_uri=checkpoint_uri_for(model.uri), examples_uri=examples.uri)
    model.metadata.update(result.metadata)
    return result.val_accuracy


def finetune_op(examples: Input[Dataset], frozen_model: Input[Model], tune_result: Input[Artifact],
                model: Output[Model], batch_size: int = 32,
                finetune_epochs: int = 10, unfreeze_layers: int = 50, finetune_learning_rate: float = 1e-5,
                augment: bool = True, early_stopping_patience: int = 3, early_stopping_monitor: str = "val_loss",
                use_class_weights: bool = False, seed: int = 42, experiment: str = "fish-classification",
                kfp_run_id: str = "local", enabled: bool = True) -> float:
    """Fine-tune the frozen-stage model: unfreeze the backbone's last layers and continue at a low rate.

    BatchNormalization layers stay frozen. The model it starts from is an early-stopping candidate like any
    epoch, so the result is never worse on val than the frozen-stage model. After tune=all, the epochs,
    learning rate, unfrozen layers and augmentation are the `finetune_params` of `tune_result`.

    Args:
        examples: the `examples` artifact the frozen stage trained on (the same classes).
        frozen_model: the `model` artifact of train_frozen to start from.
        tune_result: the tune step's output: its finetune_params (tune=all) replace the four values below.
        model: the output `model` artifact.
        batch_size: images per training batch.
        finetune_epochs: fine-tuning epochs (at most, with early stopping), unless tune=all chose them.
        unfreeze_layers: how many of the last non-BatchNorm backbone layers become trainable, unless tune=all chose.
        finetune_learning_rate: Adam learning rate of the fine-tuning, unless tune=all chose it.
        augment: random rotation, shift, flip, zoom and shear of the training images, unless tune=all chose.
        early_stopping_patience: epochs without a gain of the monitored val metric before stopping; 0: off.
        early_stopping_monitor: val_loss or val_accuracy: the val metric that picks the best epoch.
        use_class_weights: weight the loss by inverse class frequency.
        seed: seed of dropout, augmentation and shuffling.
        experiment: MLflow experiment of the pipeline's parent run.
        kfp_run_id: pipeline run whose parent MLflow run to nest under (local: $KFP_RUN_ID or "local").
        enabled: false (the pipeline's run_finetune): write only the placeholder `model` (skipped.json).

    Returns:
        The final val accuracy of the kept weights (0.0 when not enabled).
    """
    if not enabled:
        from tlpipe.components.common import model_artifact

        model_artifact.write_skipped(model.path, "finetune", "run_finetune=False")
        model.metadata.update({"stage": "finetune", "skipped": True})
        return 0.0
    from tlpipe.components.common import tune_result as tuned
    from tlpipe.components.train import core
    from tlpipe.components.train.checkpoint import checkpoint_uri_for
    from tlpipe.components.train.params import TrainParams

    params = TrainParams(batch_size=batch_size, finetune_epochs=finetune_epochs,
                         finetune_learning_rate=finetune_learning_rate, augment=augment,
                         early_stopping_patience=early_stopping_patience,
                         early_stopping_monitor=early_stopping_monitor, use_class_weights=use_class_weights,
                         seed=seed, unfreeze_layers=unfreeze_layers
                         ).tuned(tuned.read(tune_result.path).get("finetune_params", {}))
    result = core.finetune(examples.path, frozen_model.path, model.path, params, experiment=experiment,
                           kfp_run_id=kfp_run_id, checkpoint_uri=checkpoint_uri_for(model.uri),
                           examples_uri=examples.uri)
    model.metadata.update(result.metadata)
    return result.val_accuracy


def train_scratch_op(examples: Input[Dataset], model: Output[Model], backbone: str = "MobileNetV2",
                     alpha: float = 1.0, batch_size: int = 32, epochs: int = 10, learning_rate: float = 1e-3,
                     augment: bool = True, early_stopping_patience: int = 3,
                     early_stopping_monitor: str = "val_loss", use_class_weights: bool = False,
                     seed: int = 42, experiment: str = "fish-classification", kfp_run_id: str = "local",
                     dense_units: list = [512, 256], dropouts: list = [0.5, 0.3],  # noqa: B006 - KFP defaults
                     weight_decay: float = 0.0, label_smoothing: float = 0.0, enabled: bool = True) -> float:
    """Train the same architecture from random weights: the baseline transfer learning must beat.

    Same data, head and epoch budget as the frozen stage, with `weights=None`.

    Args:
        examples: the `examples` artifact (TFRecord shards and schema.json) to train and validate on.
        model: the output `model` artifact.
        backbone: the keras.applications architecture: MobileNetV2, ResNet50 or EfficientNetB0.
        alpha: MobileNetV2 width multiplier (1.0 for the other backbones).
        batch_size: images per training batch.
        epochs: training epochs (at most, with early stopping).
        learning_rate: Adam learning rate.
        augment: random rotation, shift, flip, zoom and shear of the training images.
        early_stopping_patience: epochs without a gain of the monitored val metric before stopping; 0: off.
        early_stopping_monitor: val_loss or val_accuracy: the val metric that picks the best epoch.
        use_class_weights: weight the loss by inverse class frequency.
        seed: seed of weights initialisation, dropout, augmentation and shuffling.
        experiment: MLflow experiment of the pipeline's parent run.
        kfp_run_id: pipeline run whose parent MLflow run to nest under (local: $KFP_RUN_ID or "local").
        dense_units: units of the head's Dense layers.
        dropouts: dropout rate after each Dense layer (one per entry of dense_units).
        weight_decay: AdamW decoupled weight decay (0: Adam).
        label_smoothing: share of the target spread over all classes.
        enabled: false (the pipeline's run_scratch_baseline): write only the placeholder `model` (skipped.json).

    Returns:
        The final val accuracy of the best epoch's weights (0.0 when not enabled).
    """
    if not enabled:
        from tlpipe.components.common import model_artifact

        model_artifact.write_skipped(model.path, "scratch", "run_scratch_baseline=False")
        model.metadata.update({"stage": "scratch", "skipped": True})
        return 0.0
    from tlpipe.components.train import core
    from tlpipe.components.train.checkpoint import checkpoint_uri_for
    from tlpipe.components.train.params import TrainParams

    params = TrainParams(batch_size=batch_size, epochs=epochs, learning_rate=learning_rate, augment=augment,
                         early_stopping_patience=early_stopping_patience,
                         early_stopping_monitor=early_stopping_monitor, use_class_weights=use_class_weights,
                         seed=seed, backbone=backbone, alpha=alpha, weights=None, weight_decay=weight_decay,
                         label_smoothing=label_smoothing, dense_units=tuple(int(u) for u in dense_units),
                         dropouts=tuple(float(d) for d in dropouts))
    result = core.train_scratch(examples.path, model.path, params, experiment=experiment, kfp_run_id=kfp_run_id,
                                checkpoint_uri=checkpoint_uri_for(model.uri), examples_uri=examples.uri)
    model.metadata.update(result.metadata)
    return result.val_accuracy
