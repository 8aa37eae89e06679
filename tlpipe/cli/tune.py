"""`tlpipe tune`: search the frozen-stage recipe (Optuna) on an `examples` folder, and with `--tune all` the
fine-tuning stage's too; prints the chosen parameters."""

from __future__ import annotations

import argparse
import json

from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.components.train.params import BACKBONES, TUNE_MODES, TrainParams, TuneParams


def _run(args: argparse.Namespace) -> int:
    from tlpipe.components.train import tune

    params = TuneParams(tune=args.tune, tune_trials=args.trials, tune_timeout_s=args.timeout_s, tune_space=args.space,
                        tune_folds=args.folds, tune_max_epochs=args.max_epochs, tune_patience=args.patience,
                        tune_storage=args.storage, tune_workers=args.workers,
                        tune_finetune_trials=args.finetune_trials, tune_finetune_timeout_s=args.finetune_timeout_s)
    train = TrainParams(backbone=args.backbone, alpha=args.alpha, weights=args.weights, batch_size=args.batch_size,
                        seed=args.seed, finetune_epochs=args.finetune_epochs)
    best = tune.tune(args.examples, args.out, params, train, manifest_dir=args.manifest, track=args.track,
                     experiment=args.experiment, kfp_run_id=args.kfp_run_id)
    print(json.dumps({k: best[k] for k in ("tune", "cv_accuracy", "train_params", "trials", "finetune_params", "finetune",
                                                "seconds") if k in best},
                     indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tune", help="search the frozen-stage recipe (Optuna, grouped CV on train+val), "
                                         "and the fine-tuning stage's with --tune all")
    parser.add_argument("--examples", required=True, help="`examples` artifact folder (schema.json + TFRecords)")
    parser.add_argument("--out", required=True, help="output folder: best_params.json, the study's plots and journal")
    parser.add_argument("--manifest", default=None, help="`manifest` folder: the images' groups (else one per image)")
    parser.add_argument("--tune", default=TuneParams.tune, choices=TUNE_MODES,
                        help="frozen: search the frozen stage; all: then the fine-tuning stage on one grouped fold; "
                             "off: write the given parameters")
    parser.add_argument("--trials", type=int, default=TuneParams.tune_trials, help="trials, all workers together")
    parser.add_argument("--timeout-s", type=float, default=TuneParams.tune_timeout_s, help="search budget; 0: none")
    parser.add_argument("--space", default=TuneParams.tune_space,
                        help='JSON replacing entries of the search space, e.g. \'{"feature_cache": "on"}\'')
    parser.add_argument("--finetune-trials", type=int, default=TuneParams.tune_finetune_trials,
                        help="trials of the fine-tune search (--tune all)")
    parser.add_argument("--finetune-timeout-s", type=float, default=TuneParams.tune_finetune_timeout_s,
                        help="fine-tune search budget; 0: none")
    parser.add_argument("--finetune-epochs", type=int, default=TrainParams.finetune_epochs,
                        help="epochs of a fine-tune trial at most")
    parser.add_argument("--folds", type=int, default=TuneParams.tune_folds, help="grouped k-fold CV folds")
    parser.add_argument("--max-epochs", type=int, default=TuneParams.tune_max_epochs, help="epochs of a trial at most")
    parser.add_argument("--patience", type=int, default=TuneParams.tune_patience,
                        help="early-stopping patience of a trial (epochs)")
    parser.add_argument("--storage", default=TuneParams.tune_storage,
                        help="Optuna storage: an RDB URL (sqlite:///…, postgresql://…) or a journal file; "
                             "default: OUT/study.journal")
    parser.add_argument("--workers", type=int, default=TuneParams.tune_workers, help="processes sharing the study")
    parser.add_argument("--backbone", default=TrainParams.backbone, choices=BACKBONES,
                        help="keras.applications backbone")
    parser.add_argument("--alpha", type=float, default=TrainParams.alpha, help="MobileNetV2 width multiplier")
    parser.add_argument("--weights", default=TrainParams.weights,
                        help="imagenet | local path | s3:// URI of a .weights.h5 (stock backbone) or a backbone .keras")
    parser.add_argument("--batch-size", type=int, default=TrainParams.batch_size, help="images per batch")
    parser.add_argument("--seed", type=int, default=TrainParams.seed, help="seed of the folds, the sampler and the trials")
    parser.add_argument("--no-mlflow", dest="track", action="store_false",
                        help="do not log to MLflow (else MLFLOW_TRACKING_URI must be set)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    parser.add_argument("--kfp-run-id", default="local",
                        help="pipeline run whose parent MLflow run the trials nest under (default: $KFP_RUN_ID)")
    parser.set_defaults(func=_run)
