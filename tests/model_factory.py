"""Small real Keras classifiers in the `model` artifact layout (docs/DESIGN.md §4), for evaluate/register tests.

`train_model` fits a tiny CNN on the train split and records its history as the training stage does;
`save_artifact` writes the folder with the training stage's own writer (`components/train/outputs.py`), so
the tests read what the pipeline writes. `constant_model` and `permuted_model` derive models with a known,
worse behaviour from it by editing the last layer, so the expected ranking is certain.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tlpipe.components.common.model_artifact import write_skipped


def _history(stage: str, rows: list[dict]) -> dict:
    """history.json as the training stage writes it (components/train/core.py), best epoch by val_loss."""
    best = int(np.argmin([r["val_loss"] for r in rows])) if rows else -1
    return {"stage": stage, "best_epoch": best, "epochs": rows, "stopped_early": False, "start": None,
            "resumed_from_epoch": 0}


def train_model(examples_dir: str | Path, epochs: int = 40, seed: int = 0):
    """A tiny CNN (raw 0-255 RGB in, softmax out) trained on the train split; (model, history.json content)."""
    import keras

    from tlpipe.components.common.examples import load_split, read_schema

    keras.utils.set_random_seed(seed)
    schema = read_schema(examples_dir)
    size, classes = schema["image_size"], schema["classes"]
    train = list(load_split(examples_dir, "train").as_numpy_iterator())
    val = list(load_split(examples_dir, "val").as_numpy_iterator())
    x, y = np.stack([i for i, _ in train]).astype("float32"), np.array([label for _, label in train])
    vx, vy = np.stack([i for i, _ in val]).astype("float32"), np.array([label for _, label in val])
    inputs = keras.Input((size, size, 3))
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rows, tic = [], [0.0]

    def record(epoch, logs):  # the row the trainer appends per epoch (components/train/core.py `_epochs`)
        seconds = time.perf_counter() - tic[0]
        rows.append({"epoch": epoch, "train_accuracy": float(logs["accuracy"]), "train_loss": float(logs["loss"]),
                     "val_accuracy": float(logs["val_accuracy"]), "val_loss": float(logs["val_loss"]),
                     "seconds": round(seconds, 3), "images_per_second": round(len(y) / seconds, 1)})

    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: tic.__setitem__(0, time.perf_counter()),
                                           on_epoch_end=record)
    model.fit(x, y, validation_data=(vx, vy), epochs=epochs, batch_size=10, verbose=0, callbacks=[timer])
    return model, _history("frozen", rows)


def constant_model(model, predicted_class: int):
    """A copy of `model` that always predicts `predicted_class` (accuracy = that class' share)."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    dense = clone.layers[-1]
    kernel, bias = dense.get_weights()
    bias = np.full_like(bias, -10.0)
    bias[predicted_class] = 10.0
    dense.set_weights([np.zeros_like(kernel), bias])
    return clone


def permuted_model(model, shift: int = 1):
    """A copy of `model` whose class outputs are rotated by `shift`: it predicts a wrong class when `model` is right."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    dense = clone.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([np.roll(kernel, shift, axis=1), np.roll(bias, shift)])
    return clone


def save_artifact(model, dest: str | Path, classes: list[str], history: dict | None = None,
                  stage: str = "frozen") -> Path:
    """Write `dest` as the training stage does: model.keras, class_indices.json, history.json, metadata.json,
    curves.png (`history`: as `train_model` returns it; none: a model without recorded epochs)."""
    from tlpipe.components.train.outputs import write_artifact

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    history = {**(history or _history(stage, [])), "stage": stage}
    metadata = {"stage": stage, "backbone": "tiny", "image_size": int(model.input_shape[1]), "mlflow_run_id": "",
                "val_accuracy": history["epochs"][-1]["val_accuracy"] if history["epochs"] else 0.0}
    write_artifact(dest, model, classes, history, metadata, title=stage)
    return dest


def skipped_artifact(dest: str | Path, stage: str, reason: str) -> Path:
    """A SKIPPED placeholder as the pipeline's skip-stage step writes it: a folder with only skipped.json."""
    write_skipped(dest, stage, reason)
    return Path(dest)
