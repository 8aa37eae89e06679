"""The tune step (Optuna): grouped CV on train+val only, a seeded study, workers sharing it, its choice trains."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tlpipe.cli.main import main
from tlpipe.components.common import model_artifact, tune_result
from tlpipe.components.train import tracking, tune
from tlpipe.components.train.params import TrainParams, TuneParams

SMALL = dict(tune_trials=6, tune_max_epochs=5, tune_patience=2, tune_timeout_s=0,
             tune_space=json.dumps({"feature_cache": {"choices": ["on", "flips"]}}))


def train_params(backbone) -> TrainParams:
    return TrainParams(weights=str(backbone), batch_size=8, early_stopping_patience=0)


def test_a_seeded_search_repeats_and_its_choice_trains_the_frozen_stage(synthetic_examples, tiny_backbone, tmp_path,
                                                                        capsys):
    first = tune.tune(synthetic_examples, tmp_path / "a", TuneParams(**SMALL), train_params(tiny_backbone), track=False)
    again = tune.tune(synthetic_examples, tmp_path / "b", TuneParams(**SMALL), train_params(tiny_backbone), track=False)

    assert first["train_params"] == again["train_params"] and first["cv_accuracy"] == again["cv_accuracy"]
    assert first["trials"]["complete"] + first["trials"]["pruned"] == 6 and first["trials"]["fail"] == 0
    assert first["cv_accuracy"] > 0.6 and first["folds"] == 3  # 3 separable classes: chance is 1/3
    assert json.loads((tmp_path / "a" / tune.BEST_FILE).read_text())["train_params"] == first["train_params"]
    assert first["train_params"]["feature_cache"] in ("on", "flips") and first["train_params"]["augment"] is False
    assert first["num_images"] == 30 + 9  # train+val, never test
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([tune.BEST_FILE, "study.journal",
                                                                         *first["plots"]])
    for name in first["plots"]:
        assert (tmp_path / "a" / name).read_bytes().startswith(b"\x89PNG")
    assert tune.HISTORY_PLOT in first["plots"]

    # `tlpipe train frozen --tune-result` trains with the choice (not with its own --epochs/--learning-rate)
    assert main(["train", "frozen", "--examples", str(synthetic_examples), "--out", str(tmp_path / "model"),
                 "--weights", str(tiny_backbone), "--batch-size", "8", "--early-stopping-patience", "0",
                 "--epochs", "1", "--learning-rate", "0.5", "--tune-result", str(tmp_path / "a"), "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):])
    assert printed["val_accuracy"] >= 0.6 and printed["epochs_run"] == first["train_params"]["epochs"]
    head = [layer.units for layer in _layers(model_artifact.load_model(tmp_path / "model")) if hasattr(layer, "units")]
    assert head == [*first["train_params"]["dense_units"], 3]  # the chosen head, not the default 512/256


def test_tune_all_searches_the_finetune_stage_and_its_choice_trains_it(synthetic_examples, tiny_backbone, tmp_path,
                                                                       capsys):
    params = TuneParams(**{**SMALL, "tune": "all", "tune_finetune_trials": 3})
    train = replace(train_params(tiny_backbone), finetune_epochs=3)
    best = tune.tune(synthetic_examples, tmp_path / "tuned", params, train, track=False)

    found = best["finetune"]
    assert best["tune"] == "all" and found["trials"]["complete"] + found["trials"]["pruned"] == 3
    assert sum(found["fold_images"].values()) == 30 + 9  # a fold of train+val, never test
    assert found["val_accuracy"] >= found["start_val_accuracy"] > 0.5  # the frozen start is a candidate
    chosen = best["finetune_params"]
    assert set(chosen) == {"unfreeze_layers", "finetune_learning_rate", "augment", "finetune_epochs"}
    assert chosen["unfreeze_layers"] in (20, 50, 100) and 1e-5 <= chosen["finetune_learning_rate"] <= 1e-3
    assert 1 <= chosen["finetune_epochs"] <= 3
    assert best["line"].startswith("tune: trial ") and "; fine-tune: trial " in best["line"]
    assert f"unfreeze_layers {chosen['unfreeze_layers']}" in best["line"]
    assert tune.HISTORY_PLOT in best["plots"] and "finetune_" + tune.HISTORY_PLOT in best["plots"]
    assert sorted(p.name for p in (tmp_path / "tuned").iterdir()) == sorted([tune.BEST_FILE, "study.journal",
                                                                             *best["plots"]])
    settings = {"storage": str(tmp_path / "tuned" / "study.journal"), "train": {"seed": 42}}
    trials = tune.open_study({**settings, "study": tune.FINETUNE_STUDY_NAME}, 0).trials
    assert len(trials) == 3  # the first is the given recipe: the search starts from what the user would train
    assert trials[0].params == {"unfreeze_layers": 50, "finetune_learning_rate": 1e-5, "augment": True}

    # `tlpipe train finetune --tune-result` fine-tunes with the choice, not with its own flags
    assert main(["train", "frozen", "--examples", str(synthetic_examples), "--out", str(tmp_path / "frozen"),
                 "--weights", str(tiny_backbone), "--batch-size", "8", "--tune-result", str(tmp_path / "tuned"),
                 "--no-mlflow"]) == 0
    capsys.readouterr()
    assert main(["train", "finetune", "--examples", str(synthetic_examples), "--frozen-model", str(tmp_path / "frozen"),
                 "--out", str(tmp_path / "finetuned"), "--batch-size", "8", "--early-stopping-patience", "0",
                 "--finetune-epochs", "7", "--tune-result", str(tmp_path / "tuned"), "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):])
    assert printed["epochs_run"] == chosen["finetune_epochs"]  # not --finetune-epochs 7


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def test_two_worker_processes_share_one_study(synthetic_examples, tiny_backbone, tmp_path):
    import optuna

    best = tune.tune(synthetic_examples, tmp_path, TuneParams(**{**SMALL, "tune_workers": 2}),
                     train_params(tiny_backbone), track=False)
    settings = {"storage": str(tmp_path / "study.journal"), "study": tune.STUDY_NAME, "train": {"seed": 42}}
    trials = tune.open_study(settings, 0).trials
    workers = {t.user_attrs.get("worker") for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert workers == {0, 1}, [(t.number, t.state, t.user_attrs) for t in trials]
    assert sorted(t.number for t in trials) == list(range(len(trials))) and 6 <= len(trials) <= 7
    assert best["trials"]["complete"] + best["trials"]["pruned"] == len(trials)


def test_a_killed_worker_s_trial_is_marked_failed_and_the_study_goes_on(synthetic_examples, tiny_backbone, tmp_path):
    """Worker 1 (a real process, an SQLite study) is killed with SIGKILL inside its first trial; worker 0 then
    runs the study to its 6 trials, and the killed worker's trial ends failed, not running for ever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna

    params = TuneParams(**{**SMALL, "tune_storage": f"sqlite:///{tmp_path / 'study.db'}"})
    train = train_params(tiny_backbone)
    space = params.space()
    cached = tune.cache_features(synthetic_examples, tmp_path, train, space)
    settings = tune.worker_settings(tmp_path, params, train, space, cached["groups"])
    (tmp_path / tune.SETTINGS_FILE).write_text(json.dumps(settings))
    study = tune.open_study(settings, 0)  # as _run_study does: the tables exist before worker 1 starts
    worker = subprocess.Popen([sys.executable, "-m", "tlpipe.components.train.tune", str(tmp_path), "1"])
    deadline = time.monotonic() + 120
    while not [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if "worker" in t.user_attrs]:
        assert worker.poll() is None and time.monotonic() < deadline, "worker 1 started no trial"
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    study = tune.run_worker(tmp_path, 0)
    assert tune.fail_abandoned_trials(study) == 1
    states = [t.state for t in study.trials]
    assert len(states) == 6 and states[0] == optuna.trial.TrialState.FAIL
    assert study.trials[0].user_attrs["worker"] == 1
    assert {t.user_attrs["worker"] for t in study.trials[1:]} == {0}
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 5
    assert tune.summarise(study, train, space, tmp_path)["trials"]["fail"] == 1


def test_folds_keep_each_group_on_one_side():
    labels = np.array([0, 1, 2] * 8)
    groups = [f"video-{i // 2}" for i in range(24)]  # two images per video
    folds = tune.make_folds(labels, groups, 3, seed=1)
    assert len(folds) == 3
    for train, val in folds:
        assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert sorted(np.concatenate([val for _, val in folds]).tolist()) == list(range(24))


def test_tune_off_passes_the_given_parameters_on(synthetic_examples, tmp_path):
    given = TrainParams(learning_rate=5e-4, dense_units=(64,), dropouts=(0.2,), feature_cache="on")
    best = tune.tune(synthetic_examples, tmp_path, TuneParams(tune="off"), given, track=False)
    assert best["train_params"] == tune.chosen_params(given) and best["tune"] == "off"
    assert json.loads((tmp_path / tune.BEST_FILE).read_text())["train_params"]["learning_rate"] == 5e-4
    tuned = TrainParams(batch_size=8).tuned(tune_result.read(tmp_path)["train_params"])
    assert replace(tuned, extra={}) == replace(given, batch_size=8) and tuned.extra["tuned"] == sorted(tracking.TUNED)


def test_finetune_with_a_tune_result_that_has_no_finetune_choice_says_so(synthetic_examples, tmp_path, capsys):
    tune.tune(synthetic_examples, tmp_path / "tuned", TuneParams(tune="off"), track=False)
    assert main(["train", "finetune", "--examples", str(synthetic_examples), "--frozen-model", str(tmp_path / "frozen"),
                 "--out", str(tmp_path / "out"), "--tune-result", str(tmp_path / "tuned"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tlpipe: error: --tune-result {tmp_path / 'tuned'} holds no fine-tune choice (it was written with "
                   "tune=off): run `tlpipe tune --tune all` for one")
    assert not (tmp_path / "out").exists()


def test_tune_off_in_a_pipeline_run_logs_the_given_values_on_the_parent(stack, synthetic_examples, tmp_path):
    """Whatever tune says, the parent run holds the pipeline's values of what tune may choose."""
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils

    given = TrainParams(epochs=4, learning_rate=5e-4, weight_decay=1e-4, feature_cache="on", augment=False)
    tune.tune(synthetic_examples, tmp_path, TuneParams(tune="off", tune_space='{"feature_cache": "on"}'), given,
              kfp_run_id="tune-off-1", experiment="tune-off")
    logged = MlflowClient().get_run(mlflow_utils.parent_run_id("tune-off-1", "tune-off")).data.params
    assert {k: logged[k] for k in ("epochs", "learning_rate", "weight_decay", "feature_cache", "augment",
                                   "train.dense_units", "tune", "tune_space")} == {
        "epochs": "4", "learning_rate": "0.0005", "weight_decay": "0.0001", "feature_cache": "on",
        "augment": "False", "train.dense_units": "[512, 256]", "tune": "off", "tune_space": '{"feature_cache": "on"}'}
    assert not any(k.startswith("tune.") for k in logged)  # nothing was chosen


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tune_finetune_trials": 0}, "tune_finetune_trials must be >= 1"),
    ({"tune_space": '{"unfreeze_layers": {"choices": [10, 2.5]}}'}, "unfreeze_layers: layer counts must be whole"),
    ({"tune": "sometimes"}, "tune must be one of"),
    ({"tune_space": "{not json"}, "tune_space is not valid JSON"),
    ({"tune_space": '{"momentum": 0.9}'}, "tune_space must be a JSON object with keys among"),
    ({"tune_folds": 1}, "tune_folds must be >= 2"),
    ({"tune_space": '{"feature_cache": "off"}'}, "tune_space feature_cache: .* not 'off'"),
    ({"tune_space": '{"learning_rate": {"low": 0.1, "high": 0.01}}'}, "tune_space learning_rate: .* low <= high"),
    ({"tune_space": '{"weight_decay": {"low": 0, "high": 0.1, "log": true}}'}, "log range needs low > 0"),
    ({"tune_space": '{"dense_units": {"choices": []}}'}, "tune_space dense_units: choices must be a non-empty list"),
])
def test_bad_tune_parameters_are_named(overrides, message, synthetic_examples, tmp_path):
    with pytest.raises(ValueError, match=message):
        tune.tune(synthetic_examples, tmp_path, TuneParams(**overrides), track=False)
