"""What a stage trains and evaluates on: the decoded images, or (feature_cache) their pooled backbone features.

`feature_cache=on` computes the features of the un-augmented train and val images once, `flips` those of the
images and of their mirror images, `augmented:K` K augmented views of every train image (epoch e trains on view
e mod K); the head alone is then fitted on them. The features are kept in the checkpoint folder, so a resumed
stage does not compute them again. The tune step computes its features with the same functions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tlpipe.components.common.log import get_logger
from tlpipe.components.train import data
from tlpipe.components.train.params import TrainParams, feature_cache_views

log = get_logger("train")


class StageData:
    """Train and val inputs of one stage run; `views` > 0 when they are cached backbone features."""

    def __init__(self, examples_dir, params: TrainParams, cache_dir: Path):
        self.examples_dir, self.params = Path(examples_dir), params
        self.cache_file = Path(cache_dir) / f"features-{params.feature_cache.replace(':', '-')}.npz"
        self.num_train = data.split_size(examples_dir, "train")
        self.views = feature_cache_views(params.feature_cache)
        self.extract_seconds: float | None = None
        self._feature_fns = {}
        if self.num_train == 0 or data.split_size(examples_dir, "val") == 0:
            raise ValueError(f"{examples_dir}: train and val splits must both be non-empty")

    def prepare(self, classifier) -> None:
        """The image datasets; with a feature cache, the features too (reused from the cache file if there)."""
        import tensorflow as tf

        self.classifier = classifier
        self.train_images = data.image_dataset(self.examples_dir, "train")
        self.val_images = data.image_dataset(self.examples_dir, "val")
        if not self.views:
            self.val_data = data.batches(self.val_images, self.params.batch_size)
            return
        if self.cache_file.exists():
            cached = np.load(self.cache_file)
            self.train_features, self.train_labels = cached["train"], cached["train_labels"]
            self.val_features, self.val_labels = cached["val"], cached["val_labels"]
            log.info("feature cache: reusing %s", self.cache_file)
        else:
            started = time.perf_counter()
            self.train_features, self.train_labels = [], None
            design = data.augmentation(self.params.seed)  # one stack for all views: its random state advances
            for view in range(self.views):
                feats, self.train_labels = self.extract(self.train_images, view_augmentation(
                    self.params.feature_cache, view, design))
                self.train_features.append(feats)
                log.info("feature cache: view %d/%d of %d train images", view + 1, self.views, self.num_train)
            self.train_features = np.stack(self.train_features)
            self.val_features, self.val_labels = self.extract(self.val_images, None)
            self.extract_seconds = time.perf_counter() - started
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self.cache_file, train=self.train_features, train_labels=self.train_labels,
                     val=self.val_features, val_labels=self.val_labels)
            log.info("feature cache: %s features in %.1fs", self.train_features.shape, self.extract_seconds)
        self.val_data = tf.data.Dataset.from_tensor_slices((self.val_features, self.val_labels)).batch(
            self.params.batch_size)

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

    def clean_train_features(self):
        """Features of the un-augmented train images (for the final evaluation)."""
        if self.params.feature_cache in ("on", "flips"):
            return self.train_features[0]
        return self.extract(self.train_images, None)[0]

    def extract(self, images, augment):
        """Pooled backbone features (and labels) of a split, optionally through `augment` (training mode)."""
        if augment not in self._feature_fns:
            self._feature_fns[augment] = feature_function(self.classifier, augment)
        return extract(self._feature_fns[augment], images, self.params.batch_size)


def view_augmentation(feature_cache: str, view: int, design):
    """What makes train view `view` of a feature cache: None (the image), `flip`, or `design` (augmented:K)."""
    if feature_cache == "on" or (feature_cache == "flips" and view == 0):
        return None
    return flip if feature_cache == "flips" else design


def flip(images, training=True):
    """The images mirrored left-right (a deterministic view: `flips` caches the images and their mirrors)."""
    import tensorflow as tf

    return tf.reverse(images, axis=[2])


def feature_function(classifier, augment=None):
    """A tf.function: images -> the classifier's pooled backbone features (through `augment` first if given)."""
    import keras
    import tensorflow as tf

    extractor = keras.Model(classifier.inputs, classifier.get_layer("pool").output)

    @tf.function
    def features(x):
        if augment is not None:
            x = augment(x, training=True)
        return extractor(x, training=False)

    return features


def extract(features, images, batch_size: int):
    """(features [N, D] float32, labels [N]) of an unbatched (image, label) dataset through `features`."""
    feats, labels = [], []
    for x, y in data.batches(images, batch_size):
        feats.append(features(x).numpy().astype("float32"))
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)
