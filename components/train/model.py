"""The classifier: input normalisation -> backbone (inference mode) -> global pooling -> dense head.

The saved model takes raw 0-255 RGB (float) images and holds its own normalisation, built only from
stock Keras layers, so `keras.saving.load_model(path)` loads it anywhere in safe mode without our code.
Layer names are part of the contract with the later stages: `normalize` (absent when the backbone
normalises itself), `backbone` (a nested model), `pool`, `head` (a nested model: features -> classes).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.hashing import sha256_file
from tlpipe.components.common.log import get_logger
from tlpipe.components.train.params import BACKBONES, TrainParams

log = get_logger("train.model")

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils "caffe" mode, BGR order
WEIGHTS_CACHE_ENV = "TLPIPE_WEIGHTS_CACHE"
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".keras")  # what Keras loads: weights (Keras 3, legacy), a model
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # the widths keras.applications publishes weights for


class WeightsError(ValueError):
    """The `weights` argument names nothing usable."""


# ----- weights ------------------------------------------------------------------------------------
def weights_cache_dir() -> Path:
    """Where downloaded weights are kept: $TLPIPE_WEIGHTS_CACHE or ~/.cache/tlpipe/weights."""
    return Path(os.environ.get(WEIGHTS_CACHE_ENV) or Path.home() / ".cache" / "tlpipe" / "weights")


def resolve_weights(weights: str | None, sha256: str | None = None) -> str | None:
    """`imagenet` or None unchanged; a local path checked; an s3:// URI downloaded once into the cache.

    A download is verified against `sha256` when given; its digest is recorded so a later run reuses
    the cached copy only while it is intact.
    """
    if weights in (None, "", "none", "None"):
        return None
    if weights == "imagenet":
        return "imagenet"
    if not weights.endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(f"weights={weights!r}: expected 'imagenet', or a file (local or s3://) that is a "
                           f"stock backbone's {' or '.join(WEIGHTS_SUFFIXES[:-1])} weights or a backbone .keras")
    if s3lib.is_s3_uri(weights):
        return str(_download_weights(weights, sha256))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights={weights!r}: no such file; expected 'imagenet', an s3:// URI, or the path "
                           f"of a stock backbone's {' or '.join(WEIGHTS_SUFFIXES[:-1])} weights or of a backbone .keras")
    if sha256 and sha256_file(path) != sha256:
        raise WeightsError(f"weights file {path} has sha256 {sha256_file(path)}, expected {sha256}")
    return str(path)


def _download_weights(uri: str, sha256: str | None) -> Path:
    """Download `uri` once into the cache (keyed by URI); verify it against `sha256` and the cached digest."""
    name = Path(s3lib.split_uri(uri)[1]).name
    target = weights_cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
    recorded = target.with_name(name + ".sha256")
    if target.is_file() and recorded.is_file():
        digest = recorded.read_text().strip()
        if sha256 in (None, digest) and sha256_file(target) == digest:
            log.info("weights %s: using cached copy %s", uri, target)
            return target
    log.info("weights %s: downloading to %s", uri, target)
    s3lib.download_file(s3lib.client(), uri, target)
    digest = sha256_file(target)
    if sha256 and digest != sha256:
        target.unlink()
        raise WeightsError(f"weights {uri}: sha256 {digest} does not match the expected {sha256}")
    recorded.write_text(digest)
    return target


# ----- layers -------------------------------------------------------------------------------------
def normalization_layer(backbone: str):
    """A stock layer applying `keras.applications.<family>.preprocess_input` to raw 0-255 RGB, or None."""
    import keras

    if backbone == "MobileNetV2":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")
    if backbone == "ResNet50":  # caffe mode: RGB -> BGR, minus the ImageNet mean; a fixed 1x1 convolution
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for rgb in range(3):
            kernel[0, 0, rgb, 2 - rgb] = 1.0
        layer = keras.layers.Conv2D(3, 1, name="normalize", trainable=False, dtype="float32",
                                    kernel_initializer=keras.initializers.Constant(kernel),
                                    bias_initializer=keras.initializers.Constant(-np.array(CAFFE_BGR_MEAN)))
        return layer
    if backbone == "EfficientNetB0":
        return None  # keras.applications EfficientNet rescales and normalises inside the model
    raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")


def stock_backbone(backbone: str, image_size: int, weights: str | None, alpha: float = TrainParams.alpha,
                   source: str | None = None):
    """A `keras.applications` backbone without top; `weights` = 'imagenet' | weights file | None.

    A file that does not fit raises WeightsError naming `source` (the `weights` value given; default the file).
    """
    if weights in (None, "imagenet"):
        return _application(backbone, image_size, weights, alpha)
    model = _application(backbone, image_size, None, alpha)
    load_weights_file(model, weights, backbone, alpha, source or weights)
    return model


def _expected(backbone: str, alpha: float) -> str:
    width = f" with alpha={alpha}" if backbone == "MobileNetV2" else ""
    return f"expected the .weights.h5 of a stock {backbone}{width} (include_top=False) or a backbone .keras"


def _file_shapes(path: str) -> list[tuple[int, ...]]:
    """The shapes of every tensor in an HDF5 weights file (Keras 3 .weights.h5 or legacy .h5)."""
    import h5py

    shapes: list[tuple[int, ...]] = []
    with h5py.File(path, "r") as fh:
        fh.visititems(lambda _, obj: shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None)
    return shapes


def _make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding (keras.applications.mobilenet_v2._make_divisible)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _fitting_alphas(shapes: list[tuple[int, ...]], alpha: float) -> list[float]:
    """The MobileNetV2 widths other than `alpha` whose backbone has exactly these tensor shapes.

    The first convolution (the only 3x3 kernel over 3 input channels) has _make_divisible(32 * alpha) filters;
    only the widths that agree are built and compared tensor by tensor (0.35 and 0.5 share that count).
    """
    first = [shape[-1] for shape in shapes if len(shape) == 4 and shape[:3] == (3, 3, 3)]
    candidates = [a for a in MOBILENET_V2_ALPHAS if a != alpha and first and _make_divisible(32 * a) == first[0]]
    return [a for a in candidates
            if sorted(tuple(w.shape) for w in _application("MobileNetV2", 32, None, a).weights) == sorted(shapes)]


def load_weights_file(model, path: str, backbone: str, alpha: float, source: str) -> None:
    """Load a weights file into a stock `backbone` model; a WeightsError says why a file does not fit."""
    from collections import Counter

    if path.endswith(".keras"):
        raise WeightsError(f"weights={source!r}: a .keras file is a saved backbone model, not weights for a "
                           f"stock {backbone}; {_expected(backbone, alpha)}")
    try:
        shapes = _file_shapes(path)
    except OSError as err:
        reason = str(err).split("(", 1)[-1].rstrip(")")[:120]
        raise WeightsError(f"weights={source!r}: not a readable HDF5 weights file ({reason}); "
                           f"{_expected(backbone, alpha)}") from err
    with warnings.catch_warnings(record=True) as caught:  # a file that does not fit warns once per layer
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
            cause = None
        except (ValueError, OSError, KeyError) as err:
            cause = err
    if cause is None:
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return
    expected = [tuple(w.shape) for w in model.weights]
    unmatched = sum((Counter(shapes) - Counter(expected)).values())
    width = f" with alpha={alpha}" if backbone == "MobileNetV2" else ""
    problem = (f"weights={source!r}: does not fit a stock {backbone}{width} ({unmatched} of its {len(shapes)} "
               f"tensors match none of the model's {len(expected)} in shape)")
    fits = _fitting_alphas(shapes, alpha) if backbone == "MobileNetV2" else []
    if fits:
        raise WeightsError(f"{problem}; it fits MobileNetV2 with alpha={fits[0]}: pass alpha={fits[0]}, "
                           f"or give weights made for alpha={alpha}") from cause
    raise WeightsError(f"{problem}; {_expected(backbone, alpha)}") from cause


def _application(backbone: str, image_size: int, weights: str | None, alpha: float):
    """keras.applications' `backbone` without top, with weights None or 'imagenet'."""
    import keras

    shape = (image_size, image_size, 3)
    if backbone == "MobileNetV2":
        return keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=weights)
    if alpha != 1.0:
        raise ValueError(f"alpha={alpha} applies only to MobileNetV2, not {backbone}")
    if backbone == "ResNet50":
        return keras.applications.ResNet50(input_shape=shape, include_top=False, weights=weights)
    if backbone == "EfficientNetB0":
        return keras.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=weights)
    raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")


def saved_backbone(path: str, image_size: int, source: str | None = None):
    """A backbone model saved as `.keras` (raw 0-255 RGB in, last feature map out), resized to image_size.

    A file that is not such a model raises WeightsError naming `source` (the `weights` value given).
    """
    import zipfile

    import keras

    source = source or path
    expected = "expected a backbone saved by model.save('….keras') (one image input, one 4-D feature map output)"
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"weights={source!r}: not a Keras model archive (a .keras file is a zip); {expected}")
    try:
        loaded = keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a damaged or foreign archive
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise WeightsError(f"weights={source!r}: Keras cannot load it ({reason}); {expected}") from err
    if len(loaded.inputs) != 1 or len(loaded.outputs) != 1 or len(loaded.outputs[0].shape) != 4:
        raise WeightsError(f"weights={source!r}: a backbone model needs one image input and one 4-D feature map "
                           f"output; {expected}")
    config = loaded.get_config()
    inputs = [layer for layer in config["layers"] if layer["class_name"] == "InputLayer"]
    inputs[0]["config"]["batch_shape"] = [None, image_size, image_size, 3]
    config["name"] = "backbone"
    model = keras.Model.from_config(config)
    model.set_weights(loaded.get_weights())
    return model


def build_classifier(
    num_classes: int,
    image_size: int,
    backbone: str = TrainParams.backbone,
    weights: str | None = TrainParams.weights,
    alpha: float = TrainParams.alpha,
    dense_units: tuple[int, ...] = TrainParams.dense_units,
    dropouts: tuple[float, ...] = TrainParams.dropouts,
    seed: int = TrainParams.seed,
):
    """The full image -> class probabilities model, backbone frozen.

    `weights`: 'imagenet', None, a local/s3:// Keras weights file for the stock `backbone`, or a saved
    backbone model (`.keras`, which carries its own normalisation and config; `backbone` is then ignored).
    """
    import keras

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if len(dense_units) != len(dropouts):
        raise ValueError(f"dense_units {dense_units} and dropouts {dropouts} must have the same length")
    resolved = resolve_weights(weights)
    source = weights if weights == resolved else f"{weights} (cached as {resolved})"
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if resolved is not None and resolved.endswith(".keras"):
        base, x = saved_backbone(resolved, image_size, source), inputs
    else:
        base = stock_backbone(backbone, image_size, resolved, alpha, source)
        norm = normalization_layer(backbone)
        x = norm(inputs) if norm is not None else inputs
    base.name = "backbone"
    base.trainable = False
    # training=False documents intent, but Keras 3 lets fit()'s training=True override it: BatchNormalization
    # stays in inference mode because its layers are non-trainable (Keras 3 semantics), in every stage.
    features = keras.layers.GlobalAveragePooling2D(name="pool")(base(x, training=False))
    head = build_head(int(features.shape[-1]), num_classes, dense_units, dropouts, seed)
    return keras.Model(inputs, head(features), name="classifier")


def build_head(feature_dim: int, num_classes: int, dense_units=TrainParams.dense_units,
               dropouts=TrainParams.dropouts, seed: int = TrainParams.seed):
    """Pooled features -> Dense/Dropout blocks -> softmax; all randomness seeded."""
    import keras

    features = keras.Input((feature_dim,), name="features")
    x = features
    for i, (units, rate) in enumerate(zip(dense_units, dropouts, strict=True)):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}",
                               kernel_initializer=keras.initializers.GlorotUniform(seed + 10 * i))(x)
        x = keras.layers.Dropout(rate, seed=seed + 10 * i + 1, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed + 1000))(x)
    return keras.Model(features, outputs, name="head")


def unfreeze_last(classifier, count: int) -> list[str]:
    """Make the last `count` non-BatchNormalization backbone layers trainable (BN stays frozen); their names."""
    import keras

    if count < 0:
        raise ValueError(f"unfreeze_layers must be >= 0, got {count}")
    backbone = classifier.get_layer("backbone")
    backbone.trainable = True
    candidates = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.BatchNormalization)]
    chosen = candidates[-count:] if count else []
    chosen_ids = {id(layer) for layer in chosen}
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen_ids
    return [layer.name for layer in chosen]
