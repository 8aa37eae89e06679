"""The three training stages (docs/DESIGN.md §4): train_frozen, finetune, train_scratch.

Each stage reads an `examples` artifact, trains with a resumable per-epoch loop (checkpoint.py), early stopping
on val loss or val accuracy with best-weights restore (for finetune, the frozen-stage model it starts from is a
candidate too), logs an MLflow run (tracking.py: nested under the pipeline's parent run in a pipeline run;
its data sets are the train and val examples, with `examples_uri` as their source when given), and writes the
`model` artifact (outputs.py). The models are built in trainer.py, the inputs (images or cached features) in
features.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from tlpipe.components.common import examples, model_artifact
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.components.train import tracking
from tlpipe.components.train.checkpoint import Checkpoint, fingerprint
from tlpipe.components.train.features import StageData
from tlpipe.components.train.outputs import write_artifact
from tlpipe.components.train.params import MONITORS, TrainParams, is_better
from tlpipe.components.train.trainer import Trainer

log = get_logger("train")


@dataclass
class StageResult:
    out_dir: str
    stage: str
    val_accuracy: float
    train_accuracy: float
    top_k_accuracy: float
    mlflow_run_id: str | None
    best_epoch: int  # 0-based; -1: no epoch beat the starting weights (fine-tune kept the frozen-stage model)
    epochs_run: int
    resumed_from_epoch: int
    seconds: float
    metadata: dict


def train_frozen(examples_dir, out_dir, params: TrainParams | None = None, *, track: bool = True,
                 experiment: str = DEFAULT_EXPERIMENT, kfp_run_id: str = "local",
                 checkpoint_uri: str | None = None, examples_uri: str | None = None) -> StageResult:
    """Frozen pretrained backbone + new head (optionally on cached backbone features)."""
    params = params or TrainParams()
    return _run_stage("train_frozen", examples_dir, out_dir, params, track=track, experiment=experiment,
                      kfp_run_id=kfp_run_id, checkpoint_uri=checkpoint_uri, examples_uri=examples_uri)


def train_scratch(examples_dir, out_dir, params: TrainParams | None = None, *, track: bool = True,
                  experiment: str = DEFAULT_EXPERIMENT, kfp_run_id: str = "local",
                  checkpoint_uri: str | None = None, examples_uri: str | None = None) -> StageResult:
    """The same architecture with random weights, everything trainable (BatchNorm in training mode)."""
    params = replace(params or TrainParams(), weights=None, feature_cache="off")
    return _run_stage("train_scratch", examples_dir, out_dir, params, track=track, experiment=experiment,
                      kfp_run_id=kfp_run_id, checkpoint_uri=checkpoint_uri, examples_uri=examples_uri)


def finetune(examples_dir, frozen_model_dir, out_dir, params: TrainParams | None = None, *, track: bool = True,
             experiment: str = DEFAULT_EXPERIMENT, kfp_run_id: str = "local",
             checkpoint_uri: str | None = None, examples_uri: str | None = None, on_epoch=None) -> StageResult:
    """Continue the frozen-stage model with its last `unfreeze_layers` non-BN backbone layers trainable.

    It trains `finetune_epochs` epochs at `finetune_learning_rate`. `on_epoch(row)` is called after each
    epoch with its history row (the tune step's fine-tune trials report to Optuna and may stop the run there).
    """
    params = replace(params or TrainParams(), feature_cache="off")
    frozen_model_dir = Path(frozen_model_dir)
    frozen_classes = model_artifact.read_classes(frozen_model_dir)
    classes = examples.read_schema(examples_dir)["classes"]
    if frozen_classes != classes:
        raise ValueError(f"frozen model {frozen_model_dir} was trained on classes {frozen_classes}, "
                         f"the examples artifact {examples_dir} has {classes}")
    params = replace(params, extra={**params.extra, "frozen_model": str(frozen_model_dir)})
    return _run_stage("finetune", examples_dir, out_dir, params, track=track, experiment=experiment,
                      kfp_run_id=kfp_run_id, frozen_model_dir=frozen_model_dir, checkpoint_uri=checkpoint_uri,
                      examples_uri=examples_uri, on_epoch=on_epoch)


def _run_stage(stage, examples_dir, out_dir, params: TrainParams, *, track: bool, experiment: str,
               kfp_run_id: str, frozen_model_dir=None, checkpoint_uri: str | None = None,
               examples_uri: str | None = None, on_epoch=None) -> StageResult:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params.validate(stage)
    epochs = params.stage_epochs(stage)
    schema = examples.read_schema(examples_dir)
    classes, image_size = list(schema["classes"]), int(schema["image_size"])
    checkpoint = Checkpoint(out_dir, checkpoint_uri)
    inputs = StageData(examples_dir, params, checkpoint.folder)
    trainer = Trainer(stage, params, examples_dir, len(classes), image_size, frozen_model_dir)
    state = checkpoint.load(trainer.fitted, fingerprint(stage, params, classes, image_size), epochs)
    inputs.prepare(trainer.classifier)
    log.info("%s: %d classes, %d px, %d train images, epochs %d..%d, feature_cache=%s, augment=%s",
             stage, len(classes), image_size, inputs.num_train, state["epoch"] + 1, epochs,
             params.feature_cache, params.augment and params.feature_cache != "on")
    if params.feature_cache in ("on", "flips") and params.augment:
        log.warning("feature_cache=%s trains on un-augmented features: augmentation is not applied "
                    "(use feature_cache=augmented:K for augmented views)", params.feature_cache)
    backbone = model_artifact.read_metadata(frozen_model_dir)["backbone"] if frozen_model_dir else params.backbone
    with tracking.tracking(stage, state, track, experiment, kfp_run_id) as run:
        if run is not None and state["mlflow_run_id"] is None:
            state["mlflow_run_id"] = run.info.run_id
            tracking.log_params(stage, params, backbone, len(classes), image_size, inputs.num_train)
            tracking.log_inputs(stage, params, examples_dir, examples_uri, kfp_run_id, experiment)
        if stage == "finetune" and state["best"] is None:
            _score_start(stage, trainer, inputs, checkpoint, state)
        _epochs(stage, params, trainer, inputs, checkpoint, state, run is not None, on_epoch)
        checkpoint.load_best(trainer.fitted, state)
        monitor = params.early_stopping_monitor
        if state["best_epoch"] < 0:
            log.warning("no %s epoch improved on the starting %s %.4f: keeping the starting weights",
                        stage, monitor, state["best"][monitor])
        else:
            log.info("restored the weights of the best epoch %d (%s %.4f)", state["best_epoch"] + 1, monitor,
                     state["best"][monitor])
        final = trainer.evaluate(inputs)
        log.info("%s final: %s", stage, {k: round(v, 4) for k, v in final.items()})
        history = {"stage": stage, "best_epoch": state["best_epoch"], "epochs": state["history"],
                   "stopped_early": bool(state.get("stopped_early")), "start": state.get("start"),
                   "resumed_from_epoch": state["resumed_from_epoch"]}
        metadata = {"stage": stage, "backbone": backbone, "image_size": image_size,
                    "mlflow_run_id": state["mlflow_run_id"] or "", "val_accuracy": final["final_val_accuracy"]}
        write_artifact(out_dir, trainer.classifier, classes, history, metadata, title=stage)
        if run is not None:
            tracking.log_results(out_dir, final, inputs.extract_seconds, inputs.val_images)
    checkpoint.remove()
    seconds = time.perf_counter() - started
    log.info("%s done in %.1fs: val_accuracy %.4f -> %s", stage, seconds, final["final_val_accuracy"], out_dir)
    return StageResult(out_dir=str(out_dir), stage=stage, val_accuracy=final["final_val_accuracy"],
                       train_accuracy=final["final_train_accuracy"],
                       top_k_accuracy=final["top_k_categorical_accuracy"], mlflow_run_id=state["mlflow_run_id"],
                       best_epoch=state["best_epoch"], epochs_run=len(state["history"]),
                       resumed_from_epoch=state["resumed_from_epoch"], seconds=seconds, metadata=metadata)


def _score_start(stage: str, trainer: Trainer, inputs: StageData, checkpoint: Checkpoint, state: dict) -> None:
    """Score the starting weights (fine-tune: the frozen-stage model) on val and keep them as the best so far.

    Early stopping then restores them when no epoch beats their monitored val metric: fine-tuning never
    ends worse on val than the model it started from.
    """
    start = trainer.validate(inputs)
    state.update(best=start, best_epoch=-1, start=start)
    log.info("%s starts from val_loss %.4f val_acc %.4f", stage, start["val_loss"], start["val_accuracy"])
    checkpoint.save(trainer.fitted, state, improved=True)  # the checkpoint "after 0 epochs", best so far


def _epochs(stage: str, p: TrainParams, trainer: Trainer, inputs: StageData, checkpoint: Checkpoint,
            state: dict, track: bool, on_epoch=None) -> None:
    """Train the remaining epochs; checkpoint after each; stop early on the monitored val metric.

    Val is scored after each epoch by `Trainer.validate` (scratch: with re-estimated BatchNorm statistics).
    """
    epochs = p.stage_epochs(stage)
    while state["epoch"] < epochs and not state.get("stopped_early"):
        epoch = state["epoch"]
        tic = time.perf_counter()
        fit = trainer.fitted.fit(inputs.epoch_data(epoch), epochs=epoch + 1, initial_epoch=epoch,
                                 class_weight=trainer.class_weight, shuffle=False, verbose=0)
        val = trainer.validate(inputs)
        seconds = time.perf_counter() - tic
        h = {k: float(v[-1]) for k, v in fit.history.items()}
        row = {"epoch": epoch, "train_accuracy": h["accuracy"], "train_loss": h["loss"], **val,
               "seconds": round(seconds, 3), "images_per_second": round(inputs.num_train / seconds, 1)}
        state["history"].append(row)
        log.info("%s epoch %d/%d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f (%.1fs, %.0f img/s)",
                 stage, epoch + 1, epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                 row["val_accuracy"], seconds, row["images_per_second"])
        if track:
            tracking.log_epoch(row)
        improved = is_better(row, state["best"], p.early_stopping_monitor)
        if improved:
            state.update(best={k: row[k] for k in MONITORS}, best_epoch=epoch, wait=0)
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        state["stopped_early"] = 0 < p.early_stopping_patience <= state["wait"] and state["epoch"] < epochs
        checkpoint.save(trainer.fitted, state, improved)
        if on_epoch is not None:
            on_epoch(row)
        if state["stopped_early"]:
            log.info("early stopping after epoch %d: %s did not improve for %d epochs", epoch + 1,
                     p.early_stopping_monitor, state["wait"])
            break
