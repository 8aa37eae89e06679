"""Model builder pieces: normalisation layers, weights resolution (local, S3 with checksum cache), unfreezing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from minio.error import S3Error

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.train import model as modellib


@pytest.mark.parametrize("backbone, family", [("MobileNetV2", "mobilenet_v2"), ("ResNet50", "resnet50")])
def test_normalisation_layer_equals_keras_preprocess_input(backbone, family):
    import keras

    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, family).preprocess_input(images.copy())
    np.testing.assert_allclose(modellib.normalization_layer(backbone)(images), expected, atol=1e-4)


def test_efficientnet_normalises_inside_and_unknown_backbone_is_named():
    assert modellib.normalization_layer("EfficientNetB0") is None
    with pytest.raises(ValueError, match="'VGG16'"):
        modellib.normalization_layer("VGG16")


def test_local_weights_file_is_checked(tmp_path):
    with pytest.raises(modellib.WeightsError, match="no such file"):
        modellib.resolve_weights(str(tmp_path / "missing.weights.h5"))
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"weights")
    assert modellib.resolve_weights(str(path)) == str(path)
    assert modellib.resolve_weights("imagenet") == "imagenet" and modellib.resolve_weights(None) is None
    with pytest.raises(modellib.WeightsError, match="expected 00"):
        modellib.resolve_weights(str(path), sha256="00")


def test_s3_weights_download_once_verified_and_cached(s3_client, bucket, tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv(modellib.WEIGHTS_CACHE_ENV, str(tmp_path / "cache"))
    uri = f"s3://{bucket}/backbones/tiny.keras"
    s3lib.upload_file(s3_client, tiny_backbone, uri)
    digest = hashlib.sha256(tiny_backbone.read_bytes()).hexdigest()

    first = modellib.resolve_weights(uri, sha256=digest)
    assert first.endswith("tiny.keras") and hashlib.sha256(open(first, "rb").read()).hexdigest() == digest
    s3_client.remove_object(bucket, "backbones/tiny.keras")
    assert modellib.resolve_weights(uri, sha256=digest) == first  # served from the cache, no download

    with open(first, "ab") as fh:  # a corrupted cache entry is not used (and the object is gone now)
        fh.write(b"x")
    with pytest.raises(S3Error, match="NoSuchKey"):
        modellib.resolve_weights(uri, sha256=digest)

    s3lib.upload_file(s3_client, tiny_backbone, uri)
    with pytest.raises(modellib.WeightsError, match="does not match"):
        modellib.resolve_weights(uri, sha256="0" * 64)


def test_saved_backbone_plugs_in_at_another_size(tiny_backbone):
    classifier = modellib.build_classifier(4, 32, weights=str(tiny_backbone), dense_units=(8,), dropouts=(0.1,))
    assert [layer.name for layer in classifier.layers] == ["image", "backbone", "pool", "head"]
    assert classifier.output_shape == (None, 4)
    assert not classifier.get_layer("backbone").trainable


def test_unfreeze_last_leaves_batchnorm_frozen():
    import keras

    classifier = modellib.build_classifier(3, 32, weights=None, alpha=0.35, dense_units=(8,), dropouts=(0.1,))
    names = modellib.unfreeze_last(classifier, 10)
    backbone = classifier.get_layer("backbone")
    trainable = [layer for layer in backbone.layers if layer.trainable]
    assert [layer.name for layer in trainable] == names and len(names) == 10
    assert names[-1] == backbone.layers[-1].name
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    with pytest.raises(ValueError, match="unfreeze_layers"):
        modellib.unfreeze_last(classifier, -1)
