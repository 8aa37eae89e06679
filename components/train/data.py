"""Input pipeline on the `examples` artifact: tf.data with parallel decode, cache, shuffle, batch, prefetch.

Augmentation (the original design's ImageDataGenerator settings as Keras preprocessing layers) is a
separate model, applied only while training, so the saved classifier never contains it.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from tlpipe.components.common import examples

MEMORY_CACHE_LIMIT_BYTES = 2 << 30  # decoded split kept in RAM when smaller than this


def split_size(examples_dir: str | os.PathLike, split: str) -> int:
    return int(examples.read_schema(examples_dir)["num_examples"].get(split, 0))


def image_dataset(examples_dir: str | os.PathLike, split: str, cache: bool | None = None):
    """Unbatched (float32 image 0-255, int64 label) of one split, decoded once and cached in memory when small."""
    import tensorflow as tf

    schema = examples.read_schema(examples_dir)
    ds = examples.load_split(examples_dir, split).map(
        lambda image, label: (tf.cast(image, tf.float32), label), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.apply(tf.data.experimental.assert_cardinality(split_size(examples_dir, split)))
    if cache is None:
        size = int(schema["image_size"])
        cache = split_size(examples_dir, split) * size * size * 3 <= MEMORY_CACHE_LIMIT_BYTES
    return ds.cache() if cache else ds


def batches(ds, batch_size: int, shuffle_seed: int | None = None, buffer: int = 10_000):
    """Shuffle (fixed order for a given seed) -> batch -> prefetch."""
    import tensorflow as tf

    if shuffle_seed is not None:
        ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def augmentation(seed: int = 42):
    """Rotation +-20 deg, width/height shift +-20 %, horizontal flip, zoom +-20 %, shear 0.2 (training only)."""
    import keras

    layers = keras.layers
    return keras.Sequential([
        layers.RandomRotation(20 / 360, fill_mode="nearest", seed=seed),
        layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed + 1),
        layers.RandomFlip("horizontal", seed=seed + 2),
        layers.RandomZoom(0.2, 0.2, fill_mode="nearest", seed=seed + 3),
        layers.RandomShear(x_factor=0.2, fill_mode="nearest", seed=seed + 4),
    ], name="augment")


def labels(examples_dir: str | os.PathLike, split: str) -> np.ndarray:
    """All labels of one split, in file order."""
    return np.array([int(y) for _, y in examples.load_split(examples_dir, split).as_numpy_iterator()],
                    dtype=np.int64)


def class_weights(label_array: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * n_c) (scikit-learn's 'balanced'); a class absent from train is an error."""
    counts = Counter(int(v) for v in label_array)
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise ValueError(f"class weights: classes {missing} have no training examples")
    total = len(label_array)
    return {c: total / (num_classes * counts[c]) for c in range(num_classes)}
