"""Input pipeline helpers: labels, class weights, batches."""

from __future__ import annotations

import numpy as np
import pytest

from tlpipe.components.train import data


def test_labels_and_balanced_class_weights(synthetic_examples):
    labels = data.labels(synthetic_examples, "train")
    assert len(labels) == 30 and set(labels) == {0, 1, 2}
    weights = data.class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    with pytest.raises(ValueError, match=r"classes \[2\] have no training examples"):
        data.class_weights(np.array([0, 1]), 3)


def test_shuffled_batches_repeat_per_seed_and_keep_every_example(synthetic_examples):
    ds = data.image_dataset(synthetic_examples, "train")

    def order(seed):
        return np.concatenate([y.numpy() for _, y in data.batches(ds, 8, shuffle_seed=seed, buffer=30)])

    assert np.array_equal(order(1), order(1))
    assert sorted(order(1)) == sorted(order(2)) == sorted(data.labels(synthetic_examples, "train"))
    images, _ = next(iter(data.batches(ds, 4)))
    assert images.shape == (4, 32, 32, 3) and images.dtype.name == "float32" and float(images.numpy().max()) > 1
