"""The TensorFlow-free TFRecord/Example writer produces what TensorFlow reads back."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from tlpipe.components.common import examples


def test_writer_output_parses_with_tensorflow(synthetic_examples):
    schema = examples.read_schema(synthetic_examples)
    assert schema["num_examples"] == {"train": 30, "val": 9, "test": 9}
    items = list(examples.load_split(synthetic_examples, "train").as_numpy_iterator())
    assert len(items) == 30
    images = np.stack([img for img, _ in items])
    assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
    assert [int(label) for _, label in items] == [i % 3 for i in range(30)]


def test_example_encoding_matches_tensorflow_proto():
    ours = tf.train.Example.FromString(examples.encode_example(b"\xff\xd8jpeg", 300, b"ab" * 32))
    assert ours.features.feature["label"].int64_list.value == [300]
    assert ours.features.feature["image"].bytes_list.value == [b"\xff\xd8jpeg"]
    assert ours.features.feature["sha256"].bytes_list.value == [b"ab" * 32]


def test_tfrecord_crcs_are_checked(tmp_path):
    path = tmp_path / "part-00000.tfrecord"
    records = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    examples.write_tfrecord(path, records)
    assert list(examples.iter_records(path)) == records
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        list(examples.iter_records(path))
