"""MLflow of a stage (docs/DESIGN.md, "MLflow layout"): its nested run, params, data sets, per-epoch metrics and
results; and the pipeline parameters it owns on the pipeline's parent run."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

from tlpipe.components.common import examples, mlflow_utils, model_artifact
from tlpipe.components.common.hashing import sha256_file
from tlpipe.components.common.log import get_logger
from tlpipe.components.train.params import TOP_K, TrainParams

log = get_logger("train")

EPOCH_METRICS = ("train_accuracy", "train_loss", "val_accuracy", "val_loss")
CONTEXTS = {"train": "training", "val": "validation"}  # the examples' splits a stage reads, as MLflow contexts


@contextmanager
def tracking(stage: str, state: dict, track: bool, experiment: str, kfp_run_id: str):
    """The stage's MLflow run: the one a resumed checkpoint names, else a new nested run; None when off."""
    if not track:
        yield None
        return
    import mlflow

    mlflow_utils.connect()
    if state.get("mlflow_run_id"):
        with mlflow.start_run(run_id=state["mlflow_run_id"]) as run:
            yield run
    else:
        with mlflow_utils.stage_run(stage, kfp_run_id=kfp_run_id, experiment=experiment) as run:
            yield run


def log_params(stage: str, p: TrainParams, backbone: str, num_classes: int, image_size: int,
               num_train: int) -> None:
    """The stage's params: `epochs` and `learning_rate` are the stage's own (finetune_* for finetune)."""
    import mlflow

    params = {"base_model": backbone, "pretrained_weights": _weights_label(p.weights, stage),
              "num_classes": num_classes, "image_size": image_size, "batch_size": p.batch_size,
              "epochs": p.stage_epochs(stage), "learning_rate": p.stage_learning_rate(stage), "augment": p.augment,
              "seed": p.seed, "early_stopping_patience": p.early_stopping_patience,
              "early_stopping_monitor": p.early_stopping_monitor, "use_class_weights": p.use_class_weights,
              "num_train_examples": num_train, "top_k": min(TOP_K, num_classes - 1)}
    if stage == "finetune":
        params.update(unfreeze_layers=p.unfreeze_layers, finetune_learning_rate=p.finetune_learning_rate,
                      frozen_model=p.extra["frozen_model"])
    else:
        params.update(alpha=p.alpha, dense_units=list(p.dense_units), dropouts=list(p.dropouts),
                      feature_cache=p.feature_cache, weight_decay=p.weight_decay, label_smoothing=p.label_smoothing)
    mlflow.log_params(params)


# What the tune step may choose for train_frozen (and, with tune=all, for finetune): the tune step logs their
# pipeline values on the parent run (and its choice as tune.<name>), so that a tuned stage never contradicts them.
TUNED = ("epochs", "learning_rate", "augment", "feature_cache", "dense_units", "dropouts", "weight_decay",
         "label_smoothing")
FINETUNE_TUNED = ("finetune_epochs", "finetune_learning_rate", "unfreeze_layers", "augment")


def parent_params(stage: str, p: TrainParams) -> dict:
    """The pipeline parameters `stage` owns, under the pipeline's names (`train.<name>` for the others).

    Only those whose value is the same in every stage that logs them (MLflow params are write-once):
    finetune logs its finetune_* and augment, scratch the architecture, epochs, learning_rate, augment and the
    regularisation, frozen alone weights; frozen logs none of TUNED (the tune step logs those), a finetune
    the tune step tuned none of FINETUNE_TUNED (`extra["tuned"]`).
    """
    params = {"batch_size": p.batch_size, "seed": p.seed, "early_stopping_patience": p.early_stopping_patience,
              "early_stopping_monitor": p.early_stopping_monitor, "use_class_weights": p.use_class_weights}
    if stage == "finetune":
        return params | {n: getattr(p, n) for n in FINETUNE_TUNED if n not in p.extra.get("tuned", ())}
    params |= {"backbone": p.backbone, "alpha": p.alpha}
    if stage == "train_frozen":
        return params | {"weights": _weights_label(p.weights, stage)}
    return params | tuned_params(p, feature_cache=False)  # scratch trains on images, whatever feature_cache says


def tuned_params(p: TrainParams, feature_cache: bool = True) -> dict:
    """The TUNED parameters as the parent run names them (the tune step logs them; scratch all but feature_cache)."""
    names = [n for n in TUNED if feature_cache or n != "feature_cache"]
    return {("train." + n if n in ("dense_units", "dropouts") else n):
            list(getattr(p, n)) if isinstance(getattr(p, n), tuple) else getattr(p, n) for n in names}


def log_inputs(stage: str, p: TrainParams, examples_dir, examples_uri: str | None, kfp_run_id: str,
               experiment: str) -> None:
    """The train and val examples as data sets of the stage's run; its pipeline parameters on the parent."""
    import mlflow
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    doc = examples.read_schema(examples_dir)
    size = int(doc["image_size"])
    schema = Schema([TensorSpec(np.dtype("uint8"), (-1, size, size, 3), "image"),
                     TensorSpec(np.dtype("int64"), (-1,), "label")])
    inputs = []
    for split, context in CONTEXTS.items():
        sha256 = split_sha256(examples_dir, split)
        source = mlflow_utils.dataset_source(examples_uri and f"{examples_uri.rstrip('/')}/{split}",
                                             Path(examples_dir) / split)
        dataset = MetaDataset(source, name=f"examples-{split}", digest=sha256[:mlflow_utils.DIGEST_CHARS],
                              schema=schema)
        inputs.append(mlflow_utils.dataset_input(dataset, context, sha256, {"num_examples": doc["num_examples"][split]}))
    mlflow.tracking.MlflowClient().log_inputs(mlflow.active_run().info.run_id, datasets=inputs)
    mlflow_utils.log_to_parent(kfp_run_id, experiment, params=parent_params(stage, p))


def split_sha256(examples_dir, split: str) -> str:
    """Content hash of one split of an `examples` artifact: sha256 over its shards' names and sha256s."""
    digest = hashlib.sha256()
    for path in examples.split_files(examples_dir, split):
        digest.update(f"{Path(path).name} {sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _weights_label(weights: str | None, stage: str) -> str:
    if stage == "finetune":
        return "frozen-stage model"
    return str(weights) if weights else "none"


def log_epoch(row: dict) -> None:
    import mlflow

    mlflow.log_metrics({k: row[k] for k in EPOCH_METRICS}, step=row["epoch"])


def log_results(out_dir: Path, final: dict, extract_seconds: float | None, val_images) -> None:
    """Final metrics, the artifact's JSON files and curves, and the saved model (with signature and example)."""
    import keras
    import mlflow
    import mlflow.tensorflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    mlflow.log_metrics(final)
    if extract_seconds:
        mlflow.log_metric("feature_extraction_seconds", extract_seconds)
    for name in (model_artifact.CLASS_INDICES_FILE, model_artifact.HISTORY_FILE, model_artifact.CURVES_FILE):
        mlflow.log_artifact(str(Path(out_dir) / name))
    example = next(iter(val_images.batch(1)))[0].numpy()
    model = model_artifact.load_model(out_dir)
    signature = infer_signature(example, model.predict(example, verbose=0))
    # the tensorflow flavour (it saves Keras 3 models as .keras); mlflow.keras 3.17 fails to write input examples
    mlflow.tensorflow.log_model(model, name="model", signature=signature, input_example=example,
                                pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"])
    log.info("logged model and artifacts to MLflow run %s", mlflow.active_run().info.run_id)
