"""Fixtures of the training tests: a small saved backbone (`.keras`) and the real fish photos as examples."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A saved backbone model as the weights import writes one: raw 0-255 RGB in, its own normalisation,
    last feature map out, a fixed input size (48) other than the data's, seeded random weights."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(batch_shape=(None, 48, 48, 3), name="input")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="bn1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    path = tmp_path_factory.mktemp("backbone") / "tiny_backbone.keras"
    keras.Model(inputs, x, name="tiny").save(path)
    return path


@pytest.fixture(scope="session")
def fish_examples(shared_dir, tmp_path_factory) -> Path:
    """fish-egu2017 at 96 px, split by video id, at most 8 frames per video (~760 images)."""
    from bench.train import write_fish_examples

    return write_fish_examples(shared_dir / "data" / "fish-egu2017", tmp_path_factory.mktemp("fish") / "examples",
                               image_size=96, max_per_video=8)


@pytest.fixture(scope="session")
def fish_weights(shared_dir) -> Path:
    path = shared_dir / "weights" / "mobilenet_v2_0.35_224_no_top.weights.h5"
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared MobileNetV2-0.35 ImageNet weights live there")
    return path


def write_examples_manifest(examples_dir: Path, manifest_dir: Path, per_group: int = 2) -> Path:
    """A `manifest` artifact (common.manifest) naming the images of `examples_dir`: `per_group` images of a class
    in a row share one split group, as copies of one source would."""
    from tlpipe.components.common import examples, manifest

    classes = examples.read_schema(examples_dir)["classes"]
    columns = {name: [] for name, _ in manifest.COLUMNS}
    for split in ("train", "val", "test"):
        for i, (label, sha) in enumerate(_labels_and_hashes(examples_dir, split)):
            row = {"uri": f"s3://test/{split}/{i}.jpg", "label": classes[label], "label_index": label, "split": split,
                   "sha256": sha, "phash": "0" * 16, "group": f"{split}-{label}-{i // (per_group * len(classes))}",
                   "bytes": 0, "width": 32, "height": 32, "format": "JPEG"}
            for name, value in row.items():
                columns[name].append(value)
    manifest.write(manifest_dir, columns, classes)
    return manifest_dir


def _labels_and_hashes(examples_dir: Path, split: str) -> list[tuple[int, str]]:
    import tensorflow as tf

    from tlpipe.components.common import examples

    records = tf.data.TFRecordDataset(examples.split_files(examples_dir, split)).map(examples.parse_example)
    return [(int(label), sha.decode()) for _, label, sha in records.as_numpy_iterator()]


@pytest.fixture
def synthetic_manifest(synthetic_examples, tmp_path) -> Path:
    return write_examples_manifest(synthetic_examples, tmp_path / "manifest")
