"""The three training stages (DESIGN.md §4): train_frozen, finetune, train_scratch.

Each stage reads an `examples` artifact, trains with a resumable per-epoch loop (checkpoint under
`<out>/checkpoint/`, removed once the stage finishes), early stopping on val loss or val accuracy with
best-weights restore (for finetune, the frozen-stage model it starts from is a candidate too), logs a
nested MLflow run, and writes the `model` artifact: `model.keras`, `class_indices.json`, `history.json`,
`curves.png`. With `checkpoint_uri` (s3://) the checkpoint is also mirrored there each epoch, so a retry on
a fresh disk resumes too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from components.common import examples
from components.common.log import get_logger
from components.train import data
from components.train import model as modellib

log = get_logger("train")

STAGES = ("train_frozen", "finetune", "train_scratch")
CHECKPOINT_DIR = "checkpoint"
MODEL_FILE = "model.keras"
TOP_K = 3
MONITORS = ("val_loss", "val_accuracy")  # what early stopping and best-weights restore compare


def is_better(row: dict, best: dict | None, monitor: str) -> bool:
    """Whether an epoch's val metrics beat the best so far: lower val_loss, or higher val_accuracy."""
    if best is None:
        return True
    return row[monitor] < best[monitor] if monitor == "val_loss" else row[monitor] > best[monitor]


@dataclass
class TrainParams:
    """Everything that decides a stage's result (also the fingerprint a checkpoint must match)."""

    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-3
    augment: bool = True
    early_stopping_patience: int = 3  # <= 0: no early stopping
    early_stopping_monitor: str = "val_loss"  # or val_accuracy: which val metric picks the best epoch
    use_class_weights: bool = False
    seed: int = 42
    feature_cache: str = "off"  # off | on | augmented:K (train_frozen only)
    backbone: str = "MobileNetV2"
    alpha: float = 1.0
    weights: str | None = "imagenet"
    dense_units: tuple[int, ...] = (512, 256)
    dropouts: tuple[float, ...] = (0.5, 0.3)
    unfreeze_layers: int = 50  # finetune only
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.early_stopping_monitor not in MONITORS:
            raise ValueError(f"early_stopping_monitor must be one of {MONITORS}, got {self.early_stopping_monitor!r}")
        if feature_cache_views(self.feature_cache) and self.feature_cache != "on" and not self.augment:
            raise ValueError(f"feature_cache={self.feature_cache!r} needs augment=True (use 'on' without augmentation)")


def feature_cache_views(feature_cache: str) -> int:
    """0 for `off`, 1 for `on` (clean features), K for `augmented:K`; anything else is an error."""
    if feature_cache == "off":
        return 0
    if feature_cache == "on":
        return 1
    prefix, _, count = feature_cache.partition(":")
    if prefix == "augmented" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ValueError(f"feature_cache must be 'off', 'on' or 'augmented:K' (K >= 1), got {feature_cache!r}")


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


# ----- public stages ------------------------------------------------------------------------------
def train_frozen(examples_dir, out_dir, params: TrainParams | None = None, *, track: bool = True,
                 experiment: str = "fish-classification", kfp_run_id: str = "local",
                 checkpoint_uri: str | None = None) -> StageResult:
    """Frozen pretrained backbone + new head (optionally on cached backbone features)."""
    params = params or TrainParams()
    return _run_stage("train_frozen", examples_dir, out_dir, params, track=track, experiment=experiment,
                      kfp_run_id=kfp_run_id, checkpoint_uri=checkpoint_uri)


def train_scratch(examples_dir, out_dir, params: TrainParams | None = None, *, track: bool = True,
                  experiment: str = "fish-classification", kfp_run_id: str = "local",
                  checkpoint_uri: str | None = None) -> StageResult:
    """The same architecture with random weights, everything trainable (BatchNorm in training mode)."""
    params = replace(params or TrainParams(), weights=None, feature_cache="off")
    return _run_stage("train_scratch", examples_dir, out_dir, params, track=track, experiment=experiment,
                      kfp_run_id=kfp_run_id, checkpoint_uri=checkpoint_uri)


def finetune(examples_dir, frozen_model_dir, out_dir, params: TrainParams | None = None, *, track: bool = True,
             experiment: str = "fish-classification", kfp_run_id: str = "local",
             checkpoint_uri: str | None = None) -> StageResult:
    """Continue the frozen-stage model with its last `unfreeze_layers` non-BN backbone layers trainable."""
    params = replace(params or TrainParams(learning_rate=1e-5), feature_cache="off")
    frozen_model_dir = Path(frozen_model_dir)
    frozen_classes = json.loads((frozen_model_dir / "class_indices.json").read_text())["classes"]
    if frozen_classes != examples.read_schema(examples_dir)["classes"]:
        raise ValueError(f"frozen model {frozen_model_dir} was trained on classes {frozen_classes}, "
                         f"the examples artifact {examples_dir} has {examples.read_schema(examples_dir)['classes']}")
    params = replace(params, extra={**params.extra, "frozen_model": str(frozen_model_dir)})
    return _run_stage("finetune", examples_dir, out_dir, params, track=track, experiment=experiment,
                      kfp_run_id=kfp_run_id, frozen_model_dir=frozen_model_dir, checkpoint_uri=checkpoint_uri)


# ----- device setup -------------------------------------------------------------------------------
def distribution():
    """MirroredStrategy + mixed precision when GPUs are visible, else the default (CPU) strategy."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
        log.info("%d GPU(s): MirroredStrategy, mixed_float16", len(gpus))
        return tf.distribute.MirroredStrategy()
    log.info("no GPU: CPU training, float32")
    return tf.distribute.get_strategy()


# ----- the stage loop -----------------------------------------------------------------------------
class _Stage:
    """Models, data and checkpoint state of one stage run."""

    def __init__(self, stage, examples_dir, out_dir, params: TrainParams, frozen_model_dir=None,
                 checkpoint_uri: str | None = None):
        import keras

        params.validate()
        self.stage, self.params = stage, params
        self.examples_dir, self.out_dir = Path(examples_dir), Path(out_dir)
        self.schema = examples.read_schema(examples_dir)
        self.classes = list(self.schema["classes"])
        self.image_size = int(self.schema["image_size"])
        self.num_train = data.split_size(examples_dir, "train")
        self.views = feature_cache_views(params.feature_cache)
        self._feature_fns = {}
        self.mirror = CheckpointMirror(checkpoint_uri) if checkpoint_uri else None
        if self.num_train == 0 or data.split_size(examples_dir, "val") == 0:
            raise ValueError(f"{examples_dir}: train and val splits must both be non-empty")
        keras.utils.set_random_seed(params.seed)
        self.strategy = distribution()
        with self.strategy.scope():
            self.classifier = self._build_classifier(frozen_model_dir)
            self.head = self.classifier.get_layer("head")
            if self.views:
                self.fitted = self.head
            elif params.augment:
                inputs = keras.Input((self.image_size, self.image_size, 3), name="image")
                augmented = data.augmentation(params.seed)(inputs)
                self.fitted = keras.Model(inputs, self.classifier(augmented), name="augmented_classifier")
            else:
                self.fitted = self.classifier
            self.fitted.compile(
                optimizer=keras.optimizers.Adam(params.learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
                    min(TOP_K, len(self.classes) - 1), name="top_k")])
            self.fitted.optimizer.build(self.fitted.trainable_variables)
        self.class_weight = None
        if params.use_class_weights:
            self.class_weight = data.class_weights(data.labels(examples_dir, "train"), len(self.classes))
            log.info("class weights %s", self.class_weight)

    def _build_classifier(self, frozen_model_dir):
        import keras

        p = self.params
        if self.stage == "finetune":
            classifier = keras.saving.load_model(Path(frozen_model_dir) / MODEL_FILE, compile=False)
            unfrozen = modellib.unfreeze_last(classifier, p.unfreeze_layers)
            log.info("fine-tuning %d backbone layers: %s .. %s", len(unfrozen), unfrozen[:1], unfrozen[-1:])
            return classifier
        classifier = modellib.build_classifier(
            len(self.classes), self.image_size, backbone=p.backbone, weights=p.weights, alpha=p.alpha,
            dense_units=tuple(p.dense_units), dropouts=tuple(p.dropouts), seed=p.seed)
        if self.stage == "train_scratch":
            classifier.get_layer("backbone").trainable = True
        return classifier

    # -- data --
    def epoch_data(self, epoch: int):
        """Training batches of one epoch: a fixed shuffle per (seed, epoch), so a resumed run repeats it."""
        import tensorflow as tf

        seed = self.params.seed * 1000 + epoch
        if self.views:
            features = self.train_features[epoch % self.views]
            ds = tf.data.Dataset.from_tensor_slices((features, self.train_labels))
        else:
            ds = self.train_images
        return data.batches(ds, self.params.batch_size, shuffle_seed=seed, buffer=self.num_train)

    def prepare_data(self) -> None:
        import tensorflow as tf

        self.train_images = data.image_dataset(self.examples_dir, "train")
        self.val_images = data.image_dataset(self.examples_dir, "val")
        if not self.views:
            self.val_data = data.batches(self.val_images, self.params.batch_size)
            return
        cache_file = self.out_dir / CHECKPOINT_DIR / f"features-{self.params.feature_cache.replace(':', '-')}.npz"
        if cache_file.exists():
            cached = np.load(cache_file)
            self.train_features, self.train_labels = cached["train"], cached["train_labels"]
            self.val_features, self.val_labels = cached["val"], cached["val_labels"]
            log.info("feature cache: reusing %s", cache_file)
        else:
            started = time.perf_counter()
            augment = data.augmentation(self.params.seed) if self.params.feature_cache != "on" else None
            self.train_features, self.train_labels = [], None
            for view in range(self.views):
                feats, self.train_labels = self.extract(self.train_images, augment)
                self.train_features.append(feats)
                log.info("feature cache: view %d/%d of %d train images", view + 1, self.views, self.num_train)
            self.train_features = np.stack(self.train_features)
            self.val_features, self.val_labels = self.extract(self.val_images, None)
            self.extract_seconds = time.perf_counter() - started
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache_file, train=self.train_features, train_labels=self.train_labels,
                     val=self.val_features, val_labels=self.val_labels)
            log.info("feature cache: %s features in %.1fs", self.train_features.shape, self.extract_seconds)
        self.val_data = tf.data.Dataset.from_tensor_slices((self.val_features, self.val_labels)).batch(
            self.params.batch_size)

    def extract(self, images, augment):
        """Pooled backbone features (and labels) of a split, optionally through the augmentation layers."""
        import keras
        import tensorflow as tf

        key = augment is not None
        if key not in self._feature_fns:
            extractor = keras.Model(self.classifier.inputs, self.classifier.get_layer("pool").output)

            @tf.function
            def features(x):
                if augment is not None:
                    x = augment(x, training=True)
                return extractor(x, training=False)

            self._feature_fns[key] = features
        feats, labels = [], []
        for x, y in data.batches(images, self.params.batch_size):
            feats.append(self._feature_fns[key](x).numpy().astype("float32"))
            labels.append(y.numpy())
        return np.concatenate(feats), np.concatenate(labels)

    # -- checkpoint --
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    def fingerprint(self) -> dict:
        return {"stage": self.stage, "params": json.loads(json.dumps(asdict(self.params))),
                "classes": self.classes, "image_size": self.image_size}

    def load_state(self) -> dict:
        """The last finished epoch's state, or a fresh one (a checkpoint of other params is discarded)."""
        fresh = {"epoch": 0, "history": [], "best": None, "best_epoch": -1, "wait": 0,
                 "mlflow_run_id": None, "fingerprint": self.fingerprint(), "resumed_from_epoch": 0}
        state_file = self.checkpoint_dir / "state.json"
        if not state_file.exists() and self.mirror:
            self.mirror.restore(self.checkpoint_dir)
        if not state_file.exists():
            return fresh
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != fresh["fingerprint"]:
            log.warning("checkpoint in %s was made with other parameters: starting over", self.checkpoint_dir)
            shutil.rmtree(self.checkpoint_dir)
            return fresh
        self.fitted.load_weights(self.checkpoint_dir / state["last_weights"])
        state["resumed_from_epoch"] = state["epoch"]
        log.info("resuming %s after epoch %d of %d from %s", self.stage, state["epoch"], self.params.epochs,
                 self.checkpoint_dir)
        return state

    def save_state(self, state: dict, improved: bool) -> None:
        """Write this epoch's weights (and the best ones), then the state naming them; drop older files."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        epoch = state["epoch"]
        last = f"epoch-{epoch:04d}.weights.h5"
        self.fitted.save_weights(self.checkpoint_dir / last)
        if improved:
            state["best_weights"] = f"best-{epoch:04d}.weights.h5"
            shutil.copyfile(self.checkpoint_dir / last, self.checkpoint_dir / state["best_weights"])
        state["last_weights"] = last
        tmp = self.checkpoint_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.checkpoint_dir / "state.json")
        keep = {last, state.get("best_weights"), "state.json"}
        for path in self.checkpoint_dir.glob("*.weights.h5"):
            if path.name not in keep:
                path.unlink()
        if self.mirror:
            self.mirror.push(self.checkpoint_dir)

    def save_start(self, state: dict) -> None:
        """Score the starting weights (fine-tune: the frozen-stage model) on val and keep them as the best so far.

        Early stopping then restores them when no epoch beats their monitored val metric: fine-tuning never
        ends worse on val than the model it started from.
        """
        val = self.fitted.evaluate(self.val_data, verbose=0, return_dict=True)
        start = {"val_loss": float(val["loss"]), "val_accuracy": float(val["accuracy"])}
        state.update(best=start, best_epoch=-1, start=start)
        log.info("%s starts from val_loss %.4f val_acc %.4f", self.stage, val["loss"], val["accuracy"])
        self.save_state(state, improved=True)  # the checkpoint "after 0 epochs", best so far

    # -- evaluation --
    def evaluate(self) -> dict:
        """Accuracy/top-k of the final model on un-augmented train and val."""
        if self.views:
            clean_train = self.train_features[0]
            if self.params.feature_cache != "on":
                clean_train, _ = self.extract(self.train_images, None)
            train = self.head.evaluate(clean_train, self.train_labels, batch_size=self.params.batch_size,
                                       verbose=0, return_dict=True)
            val = self.head.evaluate(self.val_data, verbose=0, return_dict=True)
        else:
            train = self.fitted.evaluate(data.batches(self.train_images, self.params.batch_size), verbose=0,
                                         return_dict=True)
            val = self.fitted.evaluate(self.val_data, verbose=0, return_dict=True)
        return {"final_train_accuracy": float(train["accuracy"]), "final_val_accuracy": float(val["accuracy"]),
                "final_train_loss": float(train["loss"]), "final_val_loss": float(val["loss"]),
                "top_k_categorical_accuracy": float(val["top_k"])}


@contextmanager
def _tracking(stage: str, state: dict, track: bool, experiment: str, kfp_run_id: str):
    """The stage's MLflow run: the one a resumed checkpoint names, else a new nested run; None when off."""
    if not track:
        yield None
        return
    import mlflow

    from components.common import mlflow_utils

    mlflow_utils.connect()
    if state.get("mlflow_run_id"):
        with mlflow.start_run(run_id=state["mlflow_run_id"]) as run:
            yield run
    else:
        with mlflow_utils.stage_run(stage, kfp_run_id=kfp_run_id, experiment=experiment) as run:
            yield run


def checkpoint_uri_for(artifact_uri: str) -> str | None:
    """`<artifact>/checkpoint` for an artifact stored in S3 (s3://), else None (a local disk)."""
    return f"{artifact_uri.rstrip('/')}/{CHECKPOINT_DIR}" if artifact_uri.startswith("s3://") else None


class CheckpointMirror:
    """A copy of the checkpoint folder under an s3:// prefix: a retried pod starts on an empty disk."""

    def __init__(self, uri: str):
        from components.common import s3 as s3lib

        if not s3lib.is_s3_uri(uri):
            raise ValueError(f"checkpoint_uri must be an s3:// URI, got {uri!r}")
        self.s3lib, self.uri, self.client = s3lib, uri.rstrip("/"), s3lib.client()
        self.pushed: set[str] = set()

    def _names(self) -> dict[str, str]:
        return {key.rsplit("/", 1)[-1]: key for key in self.s3lib.iter_keys(self.client, self.uri + "/")}

    def restore(self, folder: Path) -> None:
        """Download the mirrored checkpoint when it is complete (its state.json is written last)."""
        if "state.json" in self._names():
            count = self.s3lib.download_dir(self.client, self.uri, folder)
            self.pushed = {p.name for p in folder.iterdir()}
            log.info("checkpoint: restored %d files from %s", count, self.uri)

    def push(self, folder: Path) -> None:
        """Upload new files, then state.json, then delete what the folder no longer holds."""
        files = {p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".tmp")}
        for name in sorted(files - self.pushed - {"state.json"}) + ["state.json"]:
            self.s3lib.upload_file(self.client, folder / name, f"{self.uri}/{name}")
        self.pushed = files
        self.remove(keep=files)

    def remove(self, keep: set[str] = frozenset()) -> None:
        bucket = self.s3lib.split_uri(self.uri)[0]
        for name, key in self._names().items():
            if name not in keep:
                self.client.remove_object(bucket, key)


def _run_stage(stage, examples_dir, out_dir, params: TrainParams, *, track: bool, experiment: str,
               kfp_run_id: str, frozen_model_dir=None, checkpoint_uri: str | None = None) -> StageResult:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st = _Stage(stage, examples_dir, out_dir, params, frozen_model_dir, checkpoint_uri)
    state = st.load_state()
    st.prepare_data()
    log.info("%s: %d classes, %d px, %d train images, epochs %d..%d, feature_cache=%s, augment=%s",
             stage, len(st.classes), st.image_size, st.num_train, state["epoch"] + 1, params.epochs,
             params.feature_cache, params.augment and params.feature_cache != "on")
    if params.feature_cache == "on" and params.augment:
        log.warning("feature_cache=on trains on un-augmented features: augmentation is not applied "
                    "(use feature_cache=augmented:K for augmented views)")
    with _tracking(stage, state, track, experiment, kfp_run_id) as run:
        if run is not None and state["mlflow_run_id"] is None:
            state["mlflow_run_id"] = run.info.run_id
            _log_params(stage, st)
        if stage == "finetune" and state["best"] is None:
            st.save_start(state)
        _epochs(st, state, run is not None)
        st.fitted.load_weights(st.checkpoint_dir / state["best_weights"])
        monitor = params.early_stopping_monitor
        if state["best_epoch"] < 0:
            log.warning("no %s epoch improved on the starting %s %.4f: keeping the starting weights",
                        stage, monitor, state["best"][monitor])
        else:
            log.info("restored the weights of the best epoch %d (%s %.4f)", state["best_epoch"] + 1, monitor,
                     state["best"][monitor])
        final = st.evaluate()
        log.info("%s final: %s", stage, {k: round(v, 4) for k, v in final.items()})
        history = {"stage": stage, "best_epoch": state["best_epoch"], "epochs": state["history"],
                   "stopped_early": bool(state.get("stopped_early")), "start": state.get("start"),
                   "resumed_from_epoch": state["resumed_from_epoch"]}
        metadata = {"stage": stage, "backbone": _backbone_name(st), "image_size": st.image_size,
                    "mlflow_run_id": state["mlflow_run_id"] or "", "val_accuracy": final["final_val_accuracy"]}
        _write_artifact(st, history, metadata)
        if run is not None:
            _log_results(st, final, history)
    shutil.rmtree(st.checkpoint_dir, ignore_errors=True)
    if st.mirror:
        st.mirror.remove()
    seconds = time.perf_counter() - started
    log.info("%s done in %.1fs: val_accuracy %.4f -> %s", stage, seconds, final["final_val_accuracy"], out_dir)
    return StageResult(out_dir=str(out_dir), stage=stage, val_accuracy=final["final_val_accuracy"],
                       train_accuracy=final["final_train_accuracy"],
                       top_k_accuracy=final["top_k_categorical_accuracy"], mlflow_run_id=state["mlflow_run_id"],
                       best_epoch=state["best_epoch"], epochs_run=len(state["history"]),
                       resumed_from_epoch=state["resumed_from_epoch"], seconds=seconds, metadata=metadata)


def _epochs(st: _Stage, state: dict, track: bool) -> None:
    """Train the remaining epochs; checkpoint after each; stop early on the monitored val metric."""
    import mlflow

    p = st.params
    while state["epoch"] < p.epochs and not state.get("stopped_early"):
        epoch = state["epoch"]
        tic = time.perf_counter()
        fit = st.fitted.fit(st.epoch_data(epoch), validation_data=st.val_data, epochs=epoch + 1,
                            initial_epoch=epoch, class_weight=st.class_weight, shuffle=False, verbose=0)
        seconds = time.perf_counter() - tic
        h = {k: float(v[-1]) for k, v in fit.history.items()}
        row = {"epoch": epoch, "train_accuracy": h["accuracy"], "train_loss": h["loss"],
               "val_accuracy": h["val_accuracy"], "val_loss": h["val_loss"], "seconds": round(seconds, 3),
               "images_per_second": round(st.num_train / seconds, 1)}
        state["history"].append(row)
        log.info("%s epoch %d/%d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f (%.1fs, %.0f img/s)",
                 st.stage, epoch + 1, p.epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                 row["val_accuracy"], seconds, row["images_per_second"])
        if track:
            mlflow.log_metrics({k: row[k] for k in ("train_accuracy", "train_loss", "val_accuracy", "val_loss")},
                               step=epoch)
        improved = is_better(row, state["best"], p.early_stopping_monitor)
        if improved:
            state.update(best={k: row[k] for k in MONITORS}, best_epoch=epoch, wait=0)
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        state["stopped_early"] = 0 < p.early_stopping_patience <= state["wait"] and state["epoch"] < p.epochs
        st.save_state(state, improved)
        if state["stopped_early"]:
            log.info("early stopping after epoch %d: %s did not improve for %d epochs", epoch + 1,
                     p.early_stopping_monitor, state["wait"])
            break


def _backbone_name(st: _Stage) -> str:
    if st.stage == "finetune":
        return json.loads((Path(st.params.extra["frozen_model"]) / "metadata.json").read_text())["backbone"]
    return st.params.backbone


# ----- outputs ------------------------------------------------------------------------------------
def _write_artifact(st: _Stage, history: dict, metadata: dict) -> None:
    import keras

    inference = keras.Model(st.classifier.inputs, st.classifier.outputs, name="classifier")  # no optimizer
    inference.save(st.out_dir / MODEL_FILE)
    class_indices = {"classes": st.classes, "class_to_index": {c: i for i, c in enumerate(st.classes)}}
    (st.out_dir / "class_indices.json").write_text(json.dumps(class_indices, indent=2))
    (st.out_dir / "history.json").write_text(json.dumps(history, indent=2))
    plot_curves(history["epochs"], st.out_dir / "curves.png", title=st.stage)
    (st.out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Accuracy and loss per epoch, train vs val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], "o-", label=f"train {metric}")
        ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "o-", label=f"val {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} {metric}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _log_params(stage: str, st: _Stage) -> None:
    import mlflow

    p = st.params
    params = {"base_model": _backbone_name(st), "pretrained_weights": _weights_label(p.weights, stage),
              "num_classes": len(st.classes), "image_size": st.image_size, "batch_size": p.batch_size,
              "epochs": p.epochs, "learning_rate": p.learning_rate, "augment": p.augment, "seed": p.seed,
              "early_stopping_patience": p.early_stopping_patience,
              "early_stopping_monitor": p.early_stopping_monitor, "use_class_weights": p.use_class_weights,
              "num_train_examples": st.num_train, "top_k": min(TOP_K, len(st.classes) - 1)}
    if stage == "finetune":
        params.update(unfreeze_layers=p.unfreeze_layers, finetune_learning_rate=p.learning_rate,
                      frozen_model=p.extra["frozen_model"])
    else:
        params.update(alpha=p.alpha, dense_units=list(p.dense_units), dropouts=list(p.dropouts),
                      feature_cache=p.feature_cache)
    mlflow.log_params(params)


def _weights_label(weights: str | None, stage: str) -> str:
    if stage == "finetune":
        return "frozen-stage model"
    return str(weights) if weights else "none"


def _log_results(st: _Stage, final: dict, history: dict) -> None:
    import keras
    import mlflow
    import mlflow.tensorflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    mlflow.log_metrics(final)
    if getattr(st, "extract_seconds", None):
        mlflow.log_metric("feature_extraction_seconds", st.extract_seconds)
    for name in ("class_indices.json", "history.json", "curves.png"):
        mlflow.log_artifact(str(st.out_dir / name))
    example = next(iter(st.val_images.batch(1)))[0].numpy()
    model = keras.saving.load_model(st.out_dir / MODEL_FILE)
    signature = infer_signature(example, model.predict(example, verbose=0))
    # the tensorflow flavour (it saves Keras 3 models as .keras); mlflow.keras 3.17 fails to write input examples
    mlflow.tensorflow.log_model(model, name="model", signature=signature, input_example=example,
                           pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"])
    log.info("logged model and artifacts to MLflow run %s", mlflow.active_run().info.run_id)
