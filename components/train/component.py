"""KFP adapters of the training stages: map artifacts and parameters onto components.train.core.

Plain functions; the pipeline wraps them with dsl.component(fn, base_image=..., install_kfp_package=False)
and sets CPU/memory/GPU requests on the tasks. Each returns the final val accuracy. Where the output
artifact lives in S3 (an s3:// pipeline root), the per-epoch checkpoint is mirrored to
`<model uri>/checkpoint`, so a retried (preempted) pod resumes after its last finished epoch.
"""

from kfp.dsl import Dataset, Input, Model, Output


def train_frozen_op(examples: Input[Dataset], model: Output[Model], backbone: str = "MobileNetV2",
                    alpha: float = 1.0, weights: str = "imagenet", batch_size: int = 32, epochs: int = 10,
                    learning_rate: float = 1e-3, augment: bool = True, feature_cache: str = "off",
                    early_stopping_patience: int = 3, early_stopping_monitor: str = "val_loss",
                    use_class_weights: bool = False, seed: int = 42,
                    experiment: str = "fish-classification", kfp_run_id: str = "local",
                    dense_units: list = [512, 256], dropouts: list = [0.5, 0.3]) -> float:  # noqa: B006 - KFP defaults
    """Frozen pretrained backbone + new head; `weights` = imagenet | path | s3:// URI (.weights.h5 or .keras)."""
    from components.train import core

    params = core.TrainParams(batch_size=batch_size, epochs=epochs, learning_rate=learning_rate, augment=augment,
                              early_stopping_patience=early_stopping_patience,
                              early_stopping_monitor=early_stopping_monitor, use_class_weights=use_class_weights,
                              seed=seed, feature_cache=feature_cache, backbone=backbone, alpha=alpha,
                              weights=weights, dense_units=tuple(int(u) for u in dense_units),
                              dropouts=tuple(float(d) for d in dropouts))
    result = core.train_frozen(examples.path, model.path, params, experiment=experiment, kfp_run_id=kfp_run_id,
                               checkpoint_uri=core.checkpoint_uri_for(model.uri))
    model.metadata.update(result.metadata)
    return result.val_accuracy


def finetune_op(examples: Input[Dataset], frozen_model: Input[Model], model: Output[Model], batch_size: int = 32,
                epochs: int = 10, unfreeze_layers: int = 50, finetune_learning_rate: float = 1e-5,
                augment: bool = True, early_stopping_patience: int = 3, early_stopping_monitor: str = "val_loss",
                use_class_weights: bool = False, seed: int = 42, experiment: str = "fish-classification",
                kfp_run_id: str = "local") -> float:
    """Unfreeze the last `unfreeze_layers` non-BatchNorm backbone layers of the frozen-stage model and continue."""
    from components.train import core

    params = core.TrainParams(batch_size=batch_size, epochs=epochs, learning_rate=finetune_learning_rate,
                              augment=augment, early_stopping_patience=early_stopping_patience,
                              early_stopping_monitor=early_stopping_monitor,
                              use_class_weights=use_class_weights, seed=seed, unfreeze_layers=unfreeze_layers)
    result = core.finetune(examples.path, frozen_model.path, model.path, params, experiment=experiment,
                           kfp_run_id=kfp_run_id, checkpoint_uri=core.checkpoint_uri_for(model.uri))
    model.metadata.update(result.metadata)
    return result.val_accuracy


def train_scratch_op(examples: Input[Dataset], model: Output[Model], backbone: str = "MobileNetV2",
                     alpha: float = 1.0, batch_size: int = 32, epochs: int = 10, learning_rate: float = 1e-3,
                     augment: bool = True, early_stopping_patience: int = 3,
                     early_stopping_monitor: str = "val_loss", use_class_weights: bool = False,
                     seed: int = 42, experiment: str = "fish-classification", kfp_run_id: str = "local",
                     dense_units: list = [512, 256], dropouts: list = [0.5, 0.3]) -> float:  # noqa: B006 - KFP defaults
    """The same architecture from random weights (the transfer-learning baseline)."""
    from components.train import core

    params = core.TrainParams(batch_size=batch_size, epochs=epochs, learning_rate=learning_rate, augment=augment,
                              early_stopping_patience=early_stopping_patience,
                              early_stopping_monitor=early_stopping_monitor, use_class_weights=use_class_weights,
                              seed=seed, backbone=backbone, alpha=alpha, weights=None,
                              dense_units=tuple(int(u) for u in dense_units),
                              dropouts=tuple(float(d) for d in dropouts))
    result = core.train_scratch(examples.path, model.path, params, experiment=experiment, kfp_run_id=kfp_run_id,
                                checkpoint_uri=core.checkpoint_uri_for(model.uri))
    model.metadata.update(result.metadata)
    return result.val_accuracy
