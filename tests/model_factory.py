"""Small real Keras classifiers in the `model` artifact layout (docs/DESIGN.md §4), for evaluate/register tests.

`train_model` fits a tiny CNN on the train split; `constant_model` and `permuted_model` derive models with a
known, worse behaviour from it by editing the last layer, so the expected ranking is certain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tlpipe.components.common.model_artifact import (
    CLASS_INDICES_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    SKIPPED_FILE,
)


def train_model(examples_dir: str | Path, epochs: int = 40, seed: int = 0):
    """A tiny CNN (raw 0-255 RGB in, softmax out) trained on the train split of `examples_dir`."""
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
    history = model.fit(x, y, validation_data=(vx, vy), epochs=epochs, batch_size=10, verbose=0)
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


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
                  history_prefix: str = "") -> Path:
    """Write `dest` in the model-artifact layout: model.keras, class_indices.json, history.json, curves.png."""
    from PIL import Image

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save(dest / MODEL_FILE)
    (dest / CLASS_INDICES_FILE).write_text(json.dumps(
        {"classes": classes, "class_to_index": {c: i for i, c in enumerate(classes)}}))
    history = history or {}
    renamed = {(f"{history_prefix}{k}" if not k.startswith("val_") else k): v for k, v in history.items()}
    (dest / HISTORY_FILE).write_text(json.dumps(renamed))
    Image.new("RGB", (8, 8), "white").save(dest / CURVES_FILE)
    return dest


def skipped_artifact(dest: str | Path, stage: str, reason: str) -> Path:
    """A SKIPPED placeholder: a folder with only skipped.json."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / SKIPPED_FILE).write_text(json.dumps({"stage": stage, "reason": reason}))
    return dest
