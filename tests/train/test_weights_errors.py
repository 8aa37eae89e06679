"""Every weights file that cannot be used fails with one line naming `weights`, the file and what was expected."""

from __future__ import annotations

import pytest

from tlpipe.components.train import model as modellib


def _error(**kwargs) -> str:
    with pytest.raises(modellib.WeightsError) as err:
        modellib.build_classifier(3, 32, dense_units=(8,), dropouts=(0.1,), **kwargs)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message  # one line, no dump of tensor shapes
    return message


def test_truncated_weights_file_is_named_with_what_was_expected(fish_weights, tmp_path):
    truncated = tmp_path / "mnv2.weights.h5"
    truncated.write_bytes(fish_weights.read_bytes()[:5000])
    message = _error(weights=str(truncated), alpha=0.35)
    assert message.startswith(f"weights='{truncated}': not a readable HDF5 weights file (truncated file")
    assert "expected the .weights.h5 of a stock MobileNetV2 with alpha=0.35 (include_top=False)" in message


def test_text_file_named_keras_is_not_called_missing(tmp_path):
    path = tmp_path / "x.keras"
    path.write_text("not a model\n")
    message = _error(weights=str(path))
    assert message.startswith(f"weights='{path}': not a Keras model archive")
    assert "not found" not in message.lower() and "expected a backbone saved by model.save(" in message


def test_truncated_saved_backbone_is_named(tiny_backbone, tmp_path):
    path = tmp_path / "backbone.keras"
    path.write_bytes(tiny_backbone.read_bytes()[:2000])
    assert _error(weights=str(path)).startswith(f"weights='{path}': not a Keras model archive")


def test_missing_file_and_unknown_suffix(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    message = _error(weights=str(missing))
    assert message.startswith(f"weights='{missing}': no such file; expected 'imagenet', an s3:// URI")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    assert _error(weights=str(other)).startswith(f"weights='{other}': expected 'imagenet', or a file")


@pytest.mark.parametrize("alpha", [1.0, 0.5])  # 0.5 has the same first-layer width as 0.35
def test_width_mismatch_names_the_alpha_the_file_fits(fish_weights, alpha):
    message = _error(weights=str(fish_weights), alpha=alpha)
    assert message.startswith(f"weights='{fish_weights}': does not fit a stock MobileNetV2 with alpha={alpha} (")
    assert message.endswith(f"it fits MobileNetV2 with alpha=0.35: pass alpha=0.35, or give weights made for "
                            f"alpha={alpha}")


def test_weights_of_another_backbone_say_what_was_expected(fish_weights):
    message = _error(weights=str(fish_weights), backbone="ResNet50")
    assert message.startswith(f"weights='{fish_weights}': does not fit a stock ResNet50 (")
    assert message.endswith("expected the .weights.h5 of a stock ResNet50 (include_top=False) or a backbone .keras")


def test_fitting_weights_load(fish_weights):
    import h5py

    classifier = modellib.build_classifier(3, 32, weights=str(fish_weights), alpha=0.35, dense_units=(8,),
                                           dropouts=(0.1,))
    kernel = classifier.get_layer("backbone").get_layer("Conv1").kernel.numpy()
    with h5py.File(fish_weights) as fh:
        stored = [fh[name][()] for name in _datasets(fh) if fh[name].shape == kernel.shape]
    assert any((array == kernel).all() for array in stored)


def _datasets(fh) -> list[str]:
    import h5py

    names: list[str] = []
    fh.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names
