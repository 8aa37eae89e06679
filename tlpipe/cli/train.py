"""`tlpipe train frozen|finetune|scratch`: run one training stage alone on an `examples` folder."""

from __future__ import annotations

import argparse
import json

from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.components.train.params import BACKBONES, MONITORS, TrainParams


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", required=True, help="`examples` artifact folder (schema.json + TFRecords)")
    parser.add_argument("--out", required=True, help="output `model` folder (a checkpoint there is resumed)")
    parser.add_argument("--batch-size", type=int, default=TrainParams.batch_size, help="images per batch")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="turn augmentation off")
    parser.add_argument("--early-stopping-patience", type=int, default=TrainParams.early_stopping_patience,
                        help="epochs without a val gain; 0: off")
    parser.add_argument("--early-stopping-monitor", default=TrainParams.early_stopping_monitor, choices=MONITORS,
                        help="the val metric that picks the best epoch")
    parser.add_argument("--class-weights", dest="use_class_weights", action="store_true",
                        help="weight the loss by inverse class frequency")
    parser.add_argument("--seed", type=int, default=TrainParams.seed, help="seed of the weights and the data order")
    parser.add_argument("--no-mlflow", dest="track", action="store_false",
                        help="do not log to MLflow (else MLFLOW_TRACKING_URI must be set)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    parser.add_argument("--kfp-run-id", default="local",
                        help="pipeline run whose parent MLflow run to nest under (default: $KFP_RUN_ID; with "
                             "neither, the stage's run is a top-level run with no parent)")
    parser.add_argument("--checkpoint-uri", default=None,
                        help="s3:// prefix mirroring the per-epoch checkpoint (resume on another machine)")


def _epochs(parser: argparse.ArgumentParser) -> None:
    """--epochs and --learning-rate of the frozen and scratch stages."""
    parser.add_argument("--epochs", type=int, default=TrainParams.epochs, help="maximum epochs (early stopping may end sooner)")
    parser.add_argument("--learning-rate", type=float, default=TrainParams.learning_rate, help="Adam learning rate")


def _architecture(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default=TrainParams.backbone, choices=BACKBONES,
                        help="keras.applications backbone")
    parser.add_argument("--alpha", type=float, default=TrainParams.alpha, help="MobileNetV2 width multiplier")
    parser.add_argument("--dense-units", type=int, nargs="+", default=list(TrainParams.dense_units),
                        help="units of the head's hidden Dense layers")
    parser.add_argument("--dropouts", type=float, nargs="+", default=list(TrainParams.dropouts),
                        help="dropout after each of them")
    parser.add_argument("--weight-decay", type=float, default=TrainParams.weight_decay,
                        help="AdamW decoupled weight decay; 0: Adam")
    parser.add_argument("--label-smoothing", type=float, default=TrainParams.label_smoothing,
                        help="share of the target spread over all classes, in [0, 1)")


def _run(args: argparse.Namespace) -> int:
    from tlpipe.components.train import core

    params = TrainParams(
        batch_size=args.batch_size, augment=args.augment, early_stopping_patience=args.early_stopping_patience,
        early_stopping_monitor=args.early_stopping_monitor, use_class_weights=args.use_class_weights,
        seed=args.seed)
    kwargs = {"track": args.track, "experiment": args.experiment,
              "kfp_run_id": args.kfp_run_id, "checkpoint_uri": args.checkpoint_uri}
    if args.stage == "finetune":
        params.finetune_epochs, params.finetune_learning_rate = args.finetune_epochs, args.finetune_learning_rate
        params.unfreeze_layers = args.unfreeze_layers
        if args.tune_result:
            from tlpipe.components.common import tune_result

            best = tune_result.read(args.tune_result)
            if "finetune_params" not in best:
                raise ValueError(f"--tune-result {args.tune_result} holds no fine-tune choice (it was written with "
                                 f"tune={best['tune']}): run `tlpipe tune --tune all` for one")
            params = params.tuned(best["finetune_params"])
        result = core.finetune(args.examples, args.frozen_model, args.out, params, **kwargs)
    else:
        params.epochs, params.learning_rate = args.epochs, args.learning_rate
        params.backbone, params.alpha = args.backbone, args.alpha
        params.dense_units, params.dropouts = tuple(args.dense_units), tuple(args.dropouts)
        params.weight_decay, params.label_smoothing = args.weight_decay, args.label_smoothing
        if args.stage == "frozen":
            params.weights, params.feature_cache = args.weights, args.feature_cache
            if args.tune_result:
                from tlpipe.components.common import tune_result

                params = params.tuned(tune_result.read(args.tune_result)["train_params"])
            result = core.train_frozen(args.examples, args.out, params, **kwargs)
        else:
            result = core.train_scratch(args.examples, args.out, params, **kwargs)
    print(json.dumps({"val_accuracy": result.val_accuracy, "train_accuracy": result.train_accuracy,
                      "top_k_categorical_accuracy": result.top_k_accuracy, "epochs_run": result.epochs_run,
                      "resumed_from_epoch": result.resumed_from_epoch, "seconds": round(result.seconds, 1),
                      "mlflow_run_id": result.mlflow_run_id, "model": result.out_dir}, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="run one training stage (frozen, finetune, scratch) on an examples folder")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    frozen = stages.add_parser("frozen", help="pretrained backbone frozen, new head trained")
    _common(frozen)
    _epochs(frozen)
    _architecture(frozen)
    frozen.add_argument("--weights", default=TrainParams.weights,
                        help="imagenet | local path | s3:// URI of a .weights.h5 (stock backbone) or a backbone .keras")
    frozen.add_argument("--feature-cache", default=TrainParams.feature_cache, help="off | on | flips | augmented:K")
    frozen.add_argument("--tune-result", default=None,
                        help="a `tune_result` folder (`tlpipe tune --out`): train with its train_params instead of "
                             "the epochs, learning rate, head, regularisation, augment and feature cache given here")

    ft = stages.add_parser("finetune", help="unfreeze the last layers of a frozen-stage model and continue")
    _common(ft)
    ft.add_argument("--frozen-model", required=True, help="model folder written by `tlpipe train frozen`")
    ft.add_argument("--finetune-epochs", type=int, default=TrainParams.finetune_epochs, help="maximum fine-tuning epochs")
    ft.add_argument("--finetune-learning-rate", type=float, default=TrainParams.finetune_learning_rate,
                    help="Adam learning rate of fine-tuning")
    ft.add_argument("--unfreeze-layers", type=int, default=TrainParams.unfreeze_layers,
                    help="last backbone layers unfrozen (BatchNorm stays frozen)")
    ft.add_argument("--tune-result", default=None,
                    help="a `tune_result` folder of `tlpipe tune --tune all`: fine-tune with its finetune_params "
                         "instead of the epochs, learning rate, unfrozen layers and augment given here")

    scratch = stages.add_parser("scratch", help="the same architecture trained from random weights")
    _common(scratch)
    _epochs(scratch)
    _architecture(scratch)
    for p in (frozen, ft, scratch):
        p.set_defaults(func=_run)
