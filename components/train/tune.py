"""The recipe search before training (Optuna): the frozen stage's head, optimiser and augmentation on cached features.

`tune()` computes the pooled backbone features of the train+val images once (clean, mirrored, K augmented views:
features.py), then runs an Optuna study: each trial trains the head (model.build_head) on grouped k-fold splits
of the train+val groups (never the test split), epoch by epoch with early stopping on the fold's val accuracy,
reports every epoch (pruned by the median rule) and scores the mean of the folds' best val accuracies. The
best trial becomes the train_frozen parameters (`best_params.json`).

tune=all then searches the finetune stage (`finetune_search`): the frozen stage is trained once with the choice
on the first grouped fold of train+val (written as an examples folder), and each trial runs the real finetune
stage from it (unfrozen depth, learning rate, augmentation), scored by the fold's val accuracy of the weights
the stage keeps, each epoch reported for pruning. Its best trial becomes the finetune parameters.

Workers (processes) share each study through Optuna's storage: a journal file locally, an RDB URL
(PostgreSQL) in a cluster. Every trial is an MLflow run nested under the pipeline's parent run (under the tune
run outside a pipeline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from tlpipe.components.common import examples, mlflow_utils
from tlpipe.components.common import tune_result as artifact
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.components.train import data, tracking, trainer
from tlpipe.components.train import features as featurelib
from tlpipe.components.train.model import build_head
from tlpipe.components.train.params import TrainParams, TuneParams, feature_cache_views

log = get_logger("tune")

BEST_FILE, HISTORY_PLOT, IMPORTANCE_PLOT = artifact.BEST_FILE, artifact.HISTORY_PLOT, artifact.IMPORTANCE_PLOT
FEATURES_FILE = "features.npz"
SETTINGS_FILE = "settings.json"
STUDY_NAME = "tlpipe-frozen"
FINETUNE_STUDY_NAME = "tlpipe-finetune"
FOLD_EXAMPLES, FOLD_FROZEN_MODEL = "fold_examples", "fold_frozen_model"  # the fine-tune trials' inputs


def tune(examples_dir, out_dir, params: TuneParams | None = None, train: TrainParams | None = None, *,
         manifest_dir=None, track: bool = True, experiment: str = DEFAULT_EXPERIMENT,
         kfp_run_id: str = "local") -> dict:
    """Search the frozen-stage recipe (tune=all: then the finetune stage's); write the `tune_result` artifact
    (common.tune_result) into `out_dir`.

    `train` holds the pipeline's train parameters (backbone, weights, batch size, seed, the values that
    tune=off passes on unchanged; for tune=all the finetune values and early stopping, `finetune_epochs` being
    the fine-tune trials' epoch budget). `manifest_dir` gives the images' groups (ingest's `group`); without it
    every image is its own group. Tracked, it logs the pipeline's values of tracking.TUNED on the parent run
    (tune=off too) and, after a search, its choice as `tune.<name>`. Returns the content of best_params.json.
    """
    params, train = params or TuneParams(), train or TrainParams()
    params.validate()
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if params.tune == "off":
        given = chosen_params(train)
        best = {"tune": "off", "train_params": given, "line": f"tune: off; train_frozen trains with {shown(given)}"}
        if track and mlflow_utils.in_pipeline(kfp_run_id):
            mlflow_utils.connect()
            mlflow_utils.log_to_parent(kfp_run_id, experiment, params=parent_params(params, train))
    else:
        space = params.space()
        with _tracked(track, experiment, kfp_run_id) as run:
            cached = cache_features(examples_dir, out, train, space, manifest_dir)
            parent = (mlflow_utils.parent_run_id(kfp_run_id, experiment) if mlflow_utils.in_pipeline(kfp_run_id)
                      else run.info.run_id) if run is not None else None
            settings = worker_settings(out, params, train, space, cached["groups"], parent, experiment, kfp_run_id)
            best = summarise(_run_study(out, settings, params.tune_workers), train, space, out)
            best.update(num_images=len(cached["groups"]), num_groups=len(set(cached["groups"])),
                        extract_seconds=cached["seconds"])
            (out / FEATURES_FILE).unlink()  # the workers' input: not part of the artifact
            if params.tune == "all":
                best.update(finetune_search(examples_dir, out, params, train, best, settings))
            if run is not None:
                _log_study(best, out, params, train, kfp_run_id, experiment)
    best["seconds"] = round(time.perf_counter() - started, 2)
    artifact.write(out, best)
    log.info("%s", best["line"])
    return best


def shown(train_params: dict) -> str:
    """The parameters for a person: `epochs 8, learning_rate 0.0032, dropouts [0.485, 0.485], …`."""
    def value(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)
    return ", ".join(f"{k} {value(v)}" for k, v in train_params.items())


def chosen_params(p: TrainParams) -> dict:
    """The train_frozen parameters the tune step passes on (`train_params` of best_params.json): tracking.TUNED."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in ((n, getattr(p, n)) for n in tracking.TUNED)}


def parent_params(params: TuneParams, train: TrainParams, best: dict | None = None) -> dict:
    """What the tune step logs on the parent run: the pipeline's TUNED values, its own parameters, its choice."""
    chosen = {f"tune.{k}": v for k, v in {**best["train_params"], **best.get("finetune_params", {})}.items()
              } if best else {}
    given = {n: getattr(train, n) for n in tracking.FINETUNE_TUNED} if params.tune == "all" else {}
    return {**tracking.tuned_params(train), **given, "tune": params.tune, "tune_trials": params.tune_trials,
            "tune_timeout_s": params.tune_timeout_s, "tune_space": params.tune_space or "{}", **chosen}


# ----- features ------------------------------------------------------------------------------------
def _split_images(examples_dir, split: str):
    """(unbatched (float image, label) dataset, sha256 list) of one split, in file order."""
    import tensorflow as tf

    size = int(examples.read_schema(examples_dir)["image_size"])
    raw = tf.data.TFRecordDataset(examples.split_files(examples_dir, split)).map(examples.parse_example)
    shas = [s.decode() for _, _, s in raw.as_numpy_iterator()]
    images = raw.map(lambda image, label, _: (tf.cast(tf.reshape(image, (size, size, 3)), tf.float32), label))
    return images, shas


def groups_of(shas: list[str], manifest_dir) -> list[str]:
    """Each image's group from the manifest (by sha256); without a manifest (or group) the image itself."""
    if manifest_dir is None:
        return list(shas)
    import pyarrow.parquet as pq

    from tlpipe.components.common.manifest import MANIFEST_FILE

    table = pq.read_table(Path(manifest_dir) / MANIFEST_FILE, columns=["sha256", "group"]).to_pydict()
    group = {s: g for s, g in zip(table["sha256"], table["group"], strict=True) if g}
    return [group.get(s, s) for s in shas]


def cache_features(examples_dir, out: Path, train: TrainParams, space: dict, manifest_dir=None) -> dict:
    """The pooled features of train+val, clean plus every view the space's feature_cache choices need."""
    schema = examples.read_schema(examples_dir)
    classifier = trainer.stage_classifier("train_frozen", train, len(schema["classes"]), int(schema["image_size"]))
    started = time.perf_counter()
    modes = _choices(space["feature_cache"])
    design_views = max([feature_cache_views(m) for m in modes if m.startswith("augmented:")], default=0)
    clean_fn = featurelib.feature_function(classifier)
    arrays, shas = {"clean": [], "flip": [], "design": []}, []
    labels = []
    design = data.augmentation(train.seed)  # one stack for all views: its random state advances
    for split in ("train", "val"):
        images, split_shas = _split_images(examples_dir, split)
        shas += split_shas
        x, y = featurelib.extract(clean_fn, images, train.batch_size)
        arrays["clean"].append(x)
        labels.append(y)
        if "flips" in modes:
            arrays["flip"].append(featurelib.extract(featurelib.feature_function(classifier, featurelib.flip),
                                                     images, train.batch_size)[0])
        if design_views:
            fn = featurelib.feature_function(classifier, design)
            arrays["design"].append(np.stack([featurelib.extract(fn, images, train.batch_size)[0]
                                              for _ in range(design_views)]))
    saved = {"clean": np.concatenate(arrays["clean"]), "labels": np.concatenate(labels)}
    if arrays["flip"]:
        saved["flip"] = np.concatenate(arrays["flip"])
    if arrays["design"]:
        saved["design"] = np.concatenate(arrays["design"], axis=1)
    np.savez(out / FEATURES_FILE, **saved)
    groups = groups_of(shas, manifest_dir)
    seconds = round(time.perf_counter() - started, 2)
    log.info("tune: features of %d train+val images (%d groups, views: clean%s%s) in %.1fs", len(shas),
             len(set(groups)), " flip" if "flip" in saved else "", f" {design_views} augmented" if design_views else "",
             seconds)
    return {"groups": groups, "seconds": seconds}


def _choices(entry) -> list:
    return list(entry["choices"]) if isinstance(entry, dict) and "choices" in entry else [entry]


# ----- the study -----------------------------------------------------------------------------------
def worker_settings(out: Path, params: TuneParams, train: TrainParams, space: dict, groups: list[str],
                    parent: str | None = None, experiment: str = DEFAULT_EXPERIMENT, kfp_run_id: str = "local") -> dict:
    """What every worker of the frozen study reads (SETTINGS_FILE): the space, the parameters, the storage,
    the images' groups and the MLflow run the trials nest under."""
    return {"space": space, "tune": asdict(params), "train": json.loads(json.dumps(asdict(train))),
            "storage": params.tune_storage or str(out / artifact.JOURNAL_FILE), "study": STUDY_NAME,
            "mlflow_parent_run_id": parent, "experiment": experiment, "kfp_run_id": kfp_run_id, "groups": groups}


def _run_study(out: Path, settings: dict, workers: int):
    """Run a study's workers (this process and `workers` - 1 others) on `settings`; returns the study."""
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
    open_study(settings, 0)  # the storage's tables and the study exist before the other workers race to make them
    others = [subprocess.Popen([sys.executable, "-m", "tlpipe.components.train.tune", str(out), str(w)])
              for w in range(1, workers)]
    study = run_worker(out, 0)
    failed = [p.wait() for p in others]
    if any(failed):
        log.warning("tune: %d worker process(es) failed", sum(map(bool, failed)))
    fail_abandoned_trials(study)
    (out / SETTINGS_FILE).unlink()  # the workers' input: not part of the artifact
    return study


def fail_abandoned_trials(study) -> int:
    """Mark failed the trials still running once every worker has stopped (those of a killed worker), so that
    the study's counts, plots and a resumed search see them as failed; returns how many."""
    import optuna

    abandoned = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in abandoned:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    if abandoned:
        log.warning("tune: trial(s) %s of a stopped worker marked failed", abandoned)
    return len(abandoned)


def open_study(settings: dict, worker: int):
    import optuna

    storage = settings["storage"]
    if "://" in storage:  # an RDB: a trial whose worker stops beating for 2 minutes is failed by the others
        storage = optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120)
    else:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage))
    seed = settings["train"]["seed"] + worker
    finetune = settings["study"] == FINETUNE_STUDY_NAME  # few, long trials: prune from the third, after epoch 1
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if finetune else \
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    return optuna.create_study(study_name=settings["study"], storage=storage, direction="maximize",
                               load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)


def run_worker(out: Path, worker: int):
    """One worker: trials of the shared study until the study holds its number of trials or time is up."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(out)
    settings = json.loads((out / SETTINGS_FILE).read_text())
    study = open_study(settings, worker)
    p = settings["tune"]
    if settings["study"] == FINETUNE_STUDY_NAME:
        trials, timeout = p["tune_finetune_trials"], p["tune_finetune_timeout_s"]
        run = lambda trial: finetune_objective(trial, out, settings, worker)  # noqa: E731
    else:
        trials, timeout = p["tune_trials"], p["tune_timeout_s"]
        cached = dict(np.load(out / FEATURES_FILE))
        folds = make_folds(cached["labels"], settings["groups"], p["tune_folds"], settings["train"]["seed"])
        run = lambda trial: objective(trial, cached, folds, settings, worker)  # noqa: E731
    if worker == 0 and not study.trials and settings.get("first_trial"):
        study.enqueue_trial(settings["first_trial"])  # the given recipe first: the search starts from it
    done = optuna.study.MaxTrialsCallback(trials, states=None)
    study.optimize(run, n_trials=trials, timeout=timeout or None, callbacks=[done], catch=(Exception,))
    return study


def train_params(settings: dict) -> TrainParams:
    """The TrainParams a worker's settings hold (JSON lists back to tuples)."""
    given = settings["train"]
    return TrainParams(**{**given, "dense_units": tuple(given["dense_units"]), "dropouts": tuple(given["dropouts"])})


def make_folds(labels: np.ndarray, groups: list[str], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified k-fold splits of the train+val images (a group never on both sides)."""
    from sklearn.model_selection import StratifiedGroupKFold

    count = len(set(groups))
    if count < 2:
        raise ValueError(f"tune needs at least 2 groups of images for cross-validation, got {count}")
    splitter = StratifiedGroupKFold(n_splits=min(folds, count), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def sample(trial, space: dict) -> dict:
    """The trial's recipe: each entry of the space sampled (a plain value is fixed)."""
    chosen = {}
    for name, entry in space.items():
        if isinstance(entry, dict) and "choices" in entry:
            chosen[name] = trial.suggest_categorical(name, entry["choices"])
        elif isinstance(entry, dict):
            chosen[name] = trial.suggest_float(name, entry["low"], entry["high"], log=bool(entry.get("log")))
        else:
            chosen[name] = entry
    return chosen


def recipe(chosen: dict, epochs: int, train: TrainParams) -> TrainParams:
    """The TrainParams of a sampled recipe."""
    units = tuple(int(u) for u in str(chosen["dense_units"]).split(",") if u.strip())
    mode = chosen["feature_cache"]
    return replace(train, learning_rate=float(chosen["learning_rate"]), dense_units=units,
                   dropouts=(float(chosen["dropout"]),) * len(units), weight_decay=float(chosen["weight_decay"]),
                   label_smoothing=float(chosen["label_smoothing"]), feature_cache=mode,
                   augment=mode.startswith("augmented:"), epochs=epochs)


def train_views(cached: dict, mode: str) -> np.ndarray:
    """[V, N, D] train views of a feature_cache mode, as train_frozen would see them (epoch e: view e mod V)."""
    if mode == "on":
        return cached["clean"][None]
    if mode == "flips":
        return np.stack([cached["clean"], cached["flip"]])
    return cached["design"][:feature_cache_views(mode)]


def objective(trial, cached: dict, folds, settings: dict, worker: int) -> float:
    """Mean over the folds of the best val accuracy of the trial's head; each epoch reported for pruning."""
    import keras
    import optuna

    p = settings["tune"]
    train = train_params(settings)
    chosen = sample(trial, settings["space"])
    candidate = recipe(chosen, p["tune_max_epochs"], train)
    views, labels, clean = train_views(cached, candidate.feature_cache), cached["labels"], cached["clean"]
    classes = int(labels.max()) + 1
    trial.set_user_attr("worker", worker)
    run = _trial_run(settings, trial, chosen)
    scores, epochs, status = [], [], "FAILED"
    try:
        keras.utils.set_random_seed(train.seed * 1000 + trial.number)
        head = build_head(clean.shape[1], classes, candidate.dense_units, candidate.dropouts, train.seed)
        head.compile(optimizer=keras.optimizers.AdamW(candidate.learning_rate, weight_decay=candidate.weight_decay),
                     loss=trainer.smoothed_loss(classes, candidate.label_smoothing), metrics=["accuracy"])
        head.optimizer.build(head.trainable_variables)
        start = [v.numpy() for v in head.variables + head.optimizer.variables]
        for fold, (tr, va) in enumerate(folds):  # each fold from the same initial weights and a fresh optimizer
            for variable, value in zip(head.variables + head.optimizer.variables, start, strict=True):
                variable.assign(value)
            report = _Report(trial, fold * p["tune_max_epochs"])
            fit = head.fit(_epoch_batches(views[:, tr], labels[tr], train.batch_size, p["tune_max_epochs"]),
                           steps_per_epoch=-(-len(tr) // train.batch_size), epochs=p["tune_max_epochs"],
                           validation_data=(clean[va], labels[va]), validation_batch_size=256, verbose=0,
                           callbacks=[report, keras.callbacks.EarlyStopping("val_accuracy", mode="max",
                                                                            patience=p["tune_patience"])])
            if report.pruned:
                status = "KILLED"
                raise optuna.TrialPruned()
            curve = fit.history["val_accuracy"]
            scores.append(float(max(curve)))
            epochs.append(int(np.argmax(curve)) + 1)
        value = float(np.mean(scores))
        trial.set_user_attr("epochs", int(round(float(np.mean(epochs)))))
        trial.set_user_attr("fold_accuracies", scores)
        status = "FINISHED"
        return value
    finally:
        if run is not None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
            if status == "FINISHED":
                client.log_metric(run, "cv_accuracy", float(np.mean(scores)))
                client.log_param(run, "epochs", int(round(float(np.mean(epochs)))))
            client.set_terminated(run, status=status)


def _epoch_batches(views: np.ndarray, labels: np.ndarray, batch_size: int, epochs: int):
    """The training batches of `epochs` epochs in a row: epoch e is view e mod V, shuffled by e (as train_frozen)."""
    import tensorflow as tf

    def epoch(e):
        x = tf.gather(tf.constant(views), e % len(views))
        return tf.data.Dataset.from_tensor_slices((x, labels)).shuffle(len(labels), seed=e).batch(batch_size)

    return tf.data.Dataset.range(epochs).flat_map(epoch)


class _Report:
    """A Keras callback: each epoch's val accuracy to the Optuna trial; stops the fit when the trial is pruned."""

    def __new__(cls, trial, offset: int):
        import keras

        class Report(keras.callbacks.Callback):
            pruned = False

            def on_epoch_end(self, epoch, logs=None):
                trial.report(float(logs["val_accuracy"]), offset + epoch)
                if trial.should_prune():
                    self.pruned = True
                    self.model.stop_training = True

        return Report()


def _trial_run(settings: dict, trial, chosen: dict) -> str | None:
    """A nested MLflow run for the trial (None when the tune step is not tracked)."""
    if not settings["mlflow_parent_run_id"]:
        return None
    from mlflow.tracking import MlflowClient

    mlflow_utils.connect()
    finetune = settings["study"] == FINETUNE_STUDY_NAME
    tags = {"mlflow.parentRunId": settings["mlflow_parent_run_id"],
            "stage": "tune_finetune_trial" if finetune else "tune_trial", "trial": str(trial.number)}
    if mlflow_utils.in_pipeline(settings["kfp_run_id"]):
        tags["kfp_run_id"] = mlflow_utils.current_kfp_run_id(settings["kfp_run_id"])
    client = MlflowClient()
    run = client.create_run(mlflow_utils.experiment_id(settings["experiment"]), run_name=f"tune-{'finetune-' if finetune else ''}trial-{trial.number}",
                            tags=tags)
    for name, value in chosen.items():
        client.log_param(run.info.run_id, name, value)
    return run.info.run_id


# ----- the fine-tune search (tune=all) --------------------------------------------------------------
def finetune_search(examples_dir, out: Path, params: TuneParams, train: TrainParams, frozen: dict,
                    settings: dict) -> dict:
    """Search the finetune stage from the frozen stage trained with the frozen search's choice.

    One grouped fold of train+val (the first of the frozen search's folds: the test split is never read)
    becomes an examples folder; the frozen stage trains on it once, then every trial fine-tunes that model
    with the real finetune stage. `frozen` is the frozen search's result; `settings` its worker settings.
    Returns finetune_params, the fine-tune summary, the plots (with the frozen ones) and the whole line.
    """
    from tlpipe.components.train import core

    started = time.perf_counter()
    labels = np.concatenate([data.labels(examples_dir, split) for split in ("train", "val")])
    fold = make_folds(labels, settings["groups"], params.tune_folds, train.seed)[0]
    fold_dir = write_fold(examples_dir, out / FOLD_EXAMPLES, fold)
    log.info("tune: fine-tune search on one grouped fold (%d train, %d val images); the frozen stage first",
             len(fold[0]), len(fold[1]))
    start = core.train_frozen(fold_dir, out / FOLD_FROZEN_MODEL, train.tuned(frozen["train_params"]), track=False)
    space = params.finetune_space()
    given = {name: getattr(train, name) for name in space}
    study = _run_study(out, {**settings, "space": space, "study": FINETUNE_STUDY_NAME,
                             "first_trial": within(space, given)}, params.tune_workers)
    for name in (FOLD_EXAMPLES, FOLD_FROZEN_MODEL, "finetune_trials"):  # the trials' inputs: not the artifact
        shutil.rmtree(out / name, ignore_errors=True)
    result = summarise_finetune(study, train, space, start.val_accuracy, out)
    result["finetune"].update(fold_images={"train": len(fold[0]), "val": len(fold[1])},
                              seconds=round(time.perf_counter() - started, 2))
    return {**result, "tune": "all", "plots": frozen["plots"] + result.pop("plots"),
            "line": f"{frozen['line']}; {result['line']}"}


def write_fold(examples_dir, fold_dir: Path, fold: tuple[np.ndarray, np.ndarray]) -> Path:
    """An examples folder whose train/val splits are a fold (indices into train+val, in file order)."""
    records = [r for split in ("train", "val") for f in examples.split_files(examples_dir, split)
               for r in examples.iter_records(f)]
    schema = examples.read_schema(examples_dir)
    for split, indices in zip(("train", "val"), fold, strict=True):
        examples.write_tfrecord(fold_dir / split / examples.shard_name(0), (records[i] for i in sorted(indices)))
    examples.write_schema(fold_dir, **{**schema, "num_shards": 1,
                                       "num_examples": {"train": len(fold[0]), "val": len(fold[1]), "test": 0}})
    return fold_dir


def within(space: dict, given: dict) -> dict:
    """The given values of the space's searched entries, each one the space allows (else left out)."""
    def allowed(entry, value) -> bool:
        if "choices" in entry:
            return value in entry["choices"]
        return entry["low"] <= value <= entry["high"]

    return {name: value for name, value in given.items()
            if isinstance(space.get(name), dict) and allowed(space[name], value)}


def finetune_recipe(chosen: dict, train: TrainParams) -> TrainParams:
    """The TrainParams of a sampled fine-tune recipe (early stopping as the pipeline's finetune stage does it)."""
    return replace(train, unfreeze_layers=int(chosen["unfreeze_layers"]), augment=bool(chosen["augment"]),
                   finetune_learning_rate=float(chosen["finetune_learning_rate"]))


def finetune_objective(trial, out: Path, settings: dict, worker: int) -> float:
    """The fold's val accuracy of the weights the finetune stage keeps: the best epoch by the pipeline's
    early_stopping_monitor, the frozen start being a candidate."""
    import optuna

    from tlpipe.components.train import core

    chosen = sample(trial, settings["space"])
    candidate = finetune_recipe(chosen, train_params(settings))
    trial.set_user_attr("worker", worker)
    run = _trial_run(settings, trial, chosen)
    status, trial_dir = "FAILED", out / "finetune_trials" / f"trial-{trial.number}-worker-{worker}"

    def report(row: dict) -> None:
        trial.report(row["val_accuracy"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned()

    log.info("tune: fine-tune trial %d: %s", trial.number, shown(chosen))
    try:
        result = core.finetune(out / FOLD_EXAMPLES, out / FOLD_FROZEN_MODEL, trial_dir, candidate, track=False,
                               on_epoch=report)
        trial.set_user_attr("epochs", max(1, result.best_epoch + 1))
        trial.set_user_attr("improved_on_start", result.best_epoch >= 0)
        status = "FINISHED"
        return result.val_accuracy
    except optuna.TrialPruned:
        status = "KILLED"
        raise
    finally:
        shutil.rmtree(trial_dir, ignore_errors=True)
        if run is not None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
            if status == "FINISHED":
                client.log_metric(run, "val_accuracy", result.val_accuracy)
                client.log_param(run, "epochs", max(1, result.best_epoch + 1))
            client.set_terminated(run, status=status)


def summarise_finetune(study, train: TrainParams, space: dict, start_val_accuracy: float, out: Path) -> dict:
    """The best fine-tune trial as finetune parameters, its summary, plots and line."""
    counts = _counts(study)
    if not counts["complete"]:
        raise ValueError(f"tune: no fine-tune trial completed ({counts}); raise tune_finetune_trials or "
                         "tune_finetune_timeout_s")
    best = study.best_trial
    chosen = replace(finetune_recipe({**{k: v for k, v in space.items() if not isinstance(v, dict)}, **best.params},
                                     train), finetune_epochs=best.user_attrs["epochs"])
    finetune_params = {name: getattr(chosen, name) for name in tracking.FINETUNE_TUNED}
    improved = best.user_attrs["improved_on_start"]
    line = (f"fine-tune: trial {best.number} of {len(study.trials)} ({counts['complete']} complete, "
            f"{counts['pruned']} pruned) chose {shown(finetune_params)}: val accuracy {best.value:.3f} on one "
            f"grouped fold, from the frozen stage's {start_val_accuracy:.3f}"
            + ("" if improved else " (no trial's fine-tuning beat the frozen start there)"))
    return {"finetune_params": finetune_params, "line": line, "plots": _plots(study, out, "finetune_"),
            "finetune": {"val_accuracy": best.value, "start_val_accuracy": start_val_accuracy,
                         "best_trial": best.number, "trials": counts, "space": space}}


# ----- results -------------------------------------------------------------------------------------
def summarise(study, train: TrainParams, space: dict, out: Path) -> dict:
    """The best trial as train_frozen parameters, the trial counts, and the study's plots as files."""
    counts = _counts(study)
    if not counts["complete"]:
        raise ValueError(f"tune: no trial completed ({counts}); raise tune_trials or tune_timeout_s")
    best = study.best_trial
    chosen = recipe({**{k: v for k, v in space.items() if not isinstance(v, dict)}, **best.params},
                    best.user_attrs["epochs"], train)
    plots = _plots(study, out)
    result = {"tune": "frozen", "cv_accuracy": best.value, "best_trial": best.number,
              "fold_accuracies": best.user_attrs["fold_accuracies"], "train_params": chosen_params(chosen),
              "trials": counts, "folds": len(best.user_attrs["fold_accuracies"]), "space": space, "plots": plots}
    result["line"] = (f"tune: trial {best.number} of {len(study.trials)} ({counts['complete']} complete, "
                      f"{counts['pruned']} pruned) chose {shown(result['train_params'])}: grouped "
                      f"{result['folds']}-fold CV accuracy {best.value:.3f} on the train+val groups")
    return result


def _counts(study) -> dict:
    """{complete, pruned, fail}: how many of the study's trials ended so."""
    import optuna

    states = [t.state for t in study.trials]
    return {name.lower(): sum(s == state for s in states) for name, state in
            (("COMPLETE", optuna.trial.TrialState.COMPLETE), ("PRUNED", optuna.trial.TrialState.PRUNED),
             ("FAIL", optuna.trial.TrialState.FAIL))}


def _plots(study, out: Path, prefix: str = "") -> list[str]:
    """Optuna's optimisation history and parameter importances (matplotlib) as PNG files, titled by the search
    (`prefix` "finetune_": the fine-tune search); the names written. No importances when every trial scored
    the same (they would be an even split that means nothing)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    search = "Fine-tune search" if prefix else "Frozen-stage search"
    values = {t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    plots = [(prefix + HISTORY_PLOT, ovm.plot_optimization_history, "optimisation history")]
    if len(values) > 1:
        plots.append((prefix + IMPORTANCE_PLOT, ovm.plot_param_importances, "parameter importances"))
    written = []
    for name, plot, title in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            ax.set_title("", loc="left")  # Optuna's own titles, left or centred
            ax.set_title(f"{search}: {title}")
            ax.figure.savefig(out / name, dpi=80, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(name)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two completed trials
            log.warning("tune: no %s: %s", name, exc)
    return written


class _NoRun:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _tracked(track: bool, experiment: str, kfp_run_id: str):
    if not track:
        return _NoRun()
    mlflow_utils.connect()
    return mlflow_utils.stage_run("tune", kfp_run_id=kfp_run_id, experiment=experiment)


def _log_study(best: dict, out: Path, params: TuneParams, train: TrainParams, kfp_run_id: str,
               experiment: str) -> None:
    """The tune run: settings, the choice, trial counts, plots; the parent: the pipeline values and the choice."""
    import mlflow

    mlflow.log_params({"tune": params.tune, "tune_trials": params.tune_trials, "tune_timeout_s": params.tune_timeout_s,
                       "tune_folds": params.tune_folds, "tune_space": json.dumps(best["space"])[:6000]})
    mlflow.log_metrics({"cv_accuracy": best["cv_accuracy"], **{f"trials_{k}": v for k, v in best["trials"].items()}})
    if "finetune" in best:
        found = best["finetune"]
        mlflow.log_params({"tune_finetune_trials": params.tune_finetune_trials,
                           "tune_finetune_timeout_s": params.tune_finetune_timeout_s,
                           "tune_finetune_space": json.dumps(found["space"])})
        mlflow.log_metrics({"finetune_val_accuracy": found["val_accuracy"],
                            "finetune_start_val_accuracy": found["start_val_accuracy"],
                            **{f"finetune_trials_{k}": v for k, v in found["trials"].items()}})
    mlflow.set_tag("mlflow.note.content", best["line"])
    for name in best["plots"]:
        mlflow.log_artifact(str(out / name))
    mlflow_utils.log_to_parent(kfp_run_id, experiment, params=parent_params(params, train, best))


if __name__ == "__main__":  # a worker process: python -m tlpipe.components.train.tune OUT_DIR WORKER
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_worker(Path(sys.argv[1]), int(sys.argv[2]))
