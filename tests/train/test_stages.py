"""Training stages on synthetic and real data: learned behaviour, feature cache, resume, saved model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from minio.error import S3Error

from tlpipe.components.train import core
from tlpipe.components.train.model import build_head
from tlpipe.components.train.params import MONITORS, TrainParams

FRESH_LOAD = """
import sys, numpy as np, keras
from tlpipe.components.common import examples
model = keras.saving.load_model(sys.argv[1])
x, y = [], []
for image, label in examples.load_split(sys.argv[2], "val").as_numpy_iterator():
    x.append(image); y.append(label)
probs = model.predict(np.stack(x).astype("float32"), verbose=0)
print("ACCURACY", float(np.mean(probs.argmax(1) == np.array(y))), probs.shape)
"""


def small(**overrides) -> TrainParams:
    params = dict(batch_size=8, epochs=6, learning_rate=3e-3, augment=False, early_stopping_patience=0,
                  dense_units=(32, 16), dropouts=(0.2, 0.1))
    return TrainParams(**{**params, **overrides})


def test_frozen_head_learns_and_saved_model_loads_in_a_fresh_process(synthetic_examples, tiny_backbone, tmp_path):
    out = tmp_path / "model"
    result = core.train_frozen(synthetic_examples, out, small(weights=str(tiny_backbone), epochs=8), track=False)

    assert result.val_accuracy >= 0.75, result  # 3 classes: chance is 0.33
    assert sorted(p.name for p in out.iterdir()) == ["class_indices.json", "curves.png", "history.json",
                                                    "metadata.json", "model.keras"]  # checkpoint removed
    assert json.loads((out / "class_indices.json").read_text()) == {
        "classes": ["class_00", "class_01", "class_02"],
        "class_to_index": {"class_00": 0, "class_01": 1, "class_02": 2}}
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == list(range(8))
    assert result.metadata == {"stage": "train_frozen", "backbone": "MobileNetV2", "image_size": 32,
                               "mlflow_run_id": "", "val_accuracy": result.val_accuracy}

    # safe-mode load without our code (a fresh interpreter, no custom objects) gives the same accuracy
    run = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(out / "model.keras"), str(synthetic_examples)],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("ACCURACY"))
    assert float(line.split()[1]) == pytest.approx(result.val_accuracy, abs=1e-6)


def test_frozen_stage_keeps_the_backbone_and_its_batchnorm_statistics(synthetic_examples, tiny_backbone, tmp_path):
    import keras

    out = tmp_path / "model"
    core.train_frozen(synthetic_examples, out, small(weights=str(tiny_backbone), epochs=2, augment=True),
                      track=False)
    trained = keras.saving.load_model(out / "model.keras").get_layer("backbone")
    original = keras.saving.load_model(tiny_backbone)
    for a, b in zip(trained.get_weights(), original.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # kernels and BN moving mean/variance untouched


def test_feature_cache_on_trains_the_same_head_as_end_to_end(synthetic_examples, tiny_backbone, tmp_path):
    import keras

    heads = {}
    for cache in ("off", "on"):
        result = core.train_frozen(synthetic_examples, tmp_path / cache,
                                   small(weights=str(tiny_backbone), feature_cache=cache, epochs=4), track=False)
        heads[cache] = (keras.saving.load_model(tmp_path / cache / "model.keras").get_layer("head").get_weights(),
                        result)
    (w_off, r_off), (w_on, r_on) = heads["off"], heads["on"]
    assert r_off.best_epoch == r_on.best_epoch
    for a, b in zip(w_off, w_on, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4)
    initial = build_head(32, 3, (32, 16), (0.2, 0.1), seed=42).get_weights()
    assert not np.allclose(w_off[0], initial[0], atol=1e-3)  # the head did train
    assert r_off.val_accuracy == pytest.approx(r_on.val_accuracy, abs=1e-6)


@pytest.mark.parametrize("monitor", MONITORS)
def test_early_stopping_restores_the_best_epoch(monitor, synthetic_examples, tiny_backbone, tmp_path):
    result = core.train_frozen(synthetic_examples, tmp_path / "m", small(
        weights=str(tiny_backbone), feature_cache="on", epochs=60, learning_rate=1e-2, early_stopping_patience=2,
        early_stopping_monitor=monitor), track=False)
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    values = [e[monitor] for e in history["epochs"]]
    best = int(np.argmin(values) if monitor == "val_loss" else np.argmax(values))  # the first best epoch
    assert history["stopped_early"] and len(values) < 60
    assert result.best_epoch == best == len(values) - 3  # 2 epochs without improvement
    assert result.val_accuracy == pytest.approx(history["epochs"][result.best_epoch]["val_accuracy"], abs=1e-6)


def test_finetune_keeps_the_frozen_model_when_no_epoch_beats_it(synthetic_examples, tiny_backbone, tmp_path):
    frozen = core.train_frozen(synthetic_examples, tmp_path / "frozen", small(
        weights=str(tiny_backbone), feature_cache="on", epochs=8), track=False)
    wrecked = core.finetune(synthetic_examples, tmp_path / "frozen", tmp_path / "ft", small(
        finetune_learning_rate=5.0, finetune_epochs=2, unfreeze_layers=2), track=False)  # a step size that ruins every epoch
    history = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert history["start"]["val_accuracy"] == pytest.approx(frozen.val_accuracy, abs=1e-6)
    assert all(e["val_loss"] > history["start"]["val_loss"] for e in history["epochs"])
    assert wrecked.best_epoch == history["best_epoch"] == -1 and len(history["epochs"]) == 2
    assert wrecked.val_accuracy == pytest.approx(frozen.val_accuracy, abs=1e-6)
    assert not (tmp_path / "ft" / "checkpoint").exists()


def test_feature_cache_augmented_views(synthetic_examples, tiny_backbone, tmp_path):
    result = core.train_frozen(synthetic_examples, tmp_path / "aug", small(
        weights=str(tiny_backbone), feature_cache="augmented:3", augment=True, epochs=8), track=False)
    assert result.val_accuracy >= 0.6, result


def test_scratch_learns_with_batchnorm_statistics_that_match_its_weights(tmp_path):
    """MobileNetV2-0.35 from random weights on an easy 3-class set: val well above chance (1/3).

    Before the BatchNorm re-estimation val stayed at exactly 1/3 (uniform outputs: the moving statistics, at
    momentum 0.999, had barely left their initial values) while train accuracy rose to 0.88.
    """
    from tlpipe.components.common.synthetic import write_examples

    ex = write_examples(tmp_path / "examples", per_split={"train": 120, "val": 30, "test": 3}, size=48)
    result = core.train_scratch(ex, tmp_path / "scratch", small(batch_size=16, epochs=5, learning_rate=1e-3,
                                                                alpha=0.35, dense_units=(32,), dropouts=(0.1,)),
                                track=False)
    val = [row["val_accuracy"] for row in json.loads((tmp_path / "scratch" / "history.json").read_text())["epochs"]]
    assert result.val_accuracy >= 0.7 and max(val) >= 0.7, val


def test_bad_parameters_are_named(synthetic_examples, tmp_path):
    with pytest.raises(ValueError, match="feature_cache"):
        core.train_frozen(synthetic_examples, tmp_path, small(feature_cache="sometimes"), track=False)
    with pytest.raises(ValueError, match="early_stopping_monitor must be one of"):
        core.train_frozen(synthetic_examples, tmp_path, small(early_stopping_monitor="accuracy"), track=False)
    with pytest.raises(ValueError, match="weights='/nope/w.h5'"):
        core.train_frozen(synthetic_examples, tmp_path, small(weights="/nope/w.h5"), track=False)
    with pytest.raises(FileNotFoundError, match="not an `examples` artifact"):
        core.train_frozen(tmp_path / "missing", tmp_path / "out", small(), track=False)


def test_resume_after_kill_ends_with_complete_history(stack, s3_client, bucket, synthetic_examples, tiny_backbone,
                                                     tmp_path):
    """A stage killed after its first finished epoch resumes there on a re-run on a fresh disk (from the S3
    mirror of its checkpoint), in the same MLflow run."""
    import shutil

    from mlflow.tracking import MlflowClient

    from tlpipe.cli.main import main
    from tlpipe.components.common import s3 as s3lib

    out = tmp_path / "model"
    mirror = f"s3://{bucket}/run-1/model/checkpoint"
    argv = ["train", "frozen", "--examples", str(synthetic_examples), "--out", str(out), "--weights",
            str(tiny_backbone), "--epochs", "40", "--batch-size", "4", "--no-augment", "--early-stopping-patience",
            "0", "--dense-units", "32", "16", "--kfp-run-id", "resume-test", "--checkpoint-uri", mirror]
    proc = subprocess.Popen([sys.executable, "-m", "tlpipe.cli.main", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    def mirrored_epoch() -> int:
        try:
            return json.loads(s3_client.get_object(bucket, "run-1/model/checkpoint/state.json").read())["epoch"]
        except S3Error:
            return 0

    deadline = time.monotonic() + 240
    while mirrored_epoch() < 1:
        assert proc.poll() is None and time.monotonic() < deadline, "stage ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = mirrored_epoch()
    assert 1 <= done < 40
    assert not (out / "model.keras").exists()
    shutil.rmtree(out)  # the retried pod starts on an empty disk

    assert main(argv) == 0
    assert list(s3lib.iter_keys(s3_client, mirror)) == []  # the mirror is removed once the stage finished
    history = json.loads((out / "history.json").read_text())
    assert history["resumed_from_epoch"] >= done
    assert [e["epoch"] for e in history["epochs"]] == list(range(40))
    assert not (out / "checkpoint").exists()
    run_id = json.loads((out / "metadata.json").read_text())["mlflow_run_id"]
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")]
    assert sorted(set(steps)) == list(range(40))


@pytest.mark.shared_data
def test_frozen_imagenet_beats_scratch_on_real_fish(fish_examples, fish_weights, tmp_path):
    """Real photos split by video: ImageNet features beat training from scratch with the same budget."""
    budget = dict(batch_size=32, epochs=6, early_stopping_patience=0, alpha=0.35, augment=False, seed=42)
    frozen = core.train_frozen(fish_examples, tmp_path / "frozen", TrainParams(
        **budget, weights=str(fish_weights), feature_cache="on"), track=False)
    scratch = core.train_scratch(fish_examples, tmp_path / "scratch", TrainParams(**budget), track=False)
    counts = json.loads((Path(fish_examples) / "schema.json").read_text())["num_examples"]
    print(f"fish {counts}: frozen val {frozen.val_accuracy:.3f} ({frozen.seconds:.0f}s), "
          f"scratch val {scratch.val_accuracy:.3f} ({scratch.seconds:.0f}s)")
    assert frozen.val_accuracy >= 0.40  # 7 classes, unseen videos
    assert frozen.val_accuracy >= scratch.val_accuracy + 0.15
