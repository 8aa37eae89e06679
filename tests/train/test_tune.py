"""The tune step (Optuna): grouped CV on train+val only, a seeded study, workers sharing it, its choice trains."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlpipe.components.train import core, tune
from tlpipe.components.train.params import TrainParams, TuneParams

SMALL = dict(tune_trials=6, tune_max_epochs=5, tune_patience=2, tune_timeout_s=0,
             tune_space=json.dumps({"feature_cache": {"choices": ["on", "flips"]}}))


def train_params(backbone) -> TrainParams:
    return TrainParams(weights=str(backbone), batch_size=8, early_stopping_patience=0)


def test_a_seeded_search_repeats_and_its_choice_trains_the_frozen_stage(synthetic_examples, tiny_backbone, tmp_path):
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

    chosen = first["train_params"]
    params = TrainParams(**{**vars(train_params(tiny_backbone)), **chosen, "dense_units": tuple(chosen["dense_units"]),
                            "dropouts": tuple(chosen["dropouts"])})
    result = core.train_frozen(synthetic_examples, tmp_path / "model", params, track=False)
    assert result.val_accuracy >= 0.6 and result.epochs_run == chosen["epochs"]


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


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tune": "all"}, "tune='all' .* not built yet"),
    ({"tune": "sometimes"}, "tune must be one of"),
    ({"tune_space": "{not json"}, "tune_space is not valid JSON"),
    ({"tune_space": '{"momentum": 0.9}'}, "tune_space must be a JSON object with keys among"),
    ({"tune_folds": 1}, "tune_folds must be >= 2"),
])
def test_bad_tune_parameters_are_named(overrides, message, synthetic_examples, tmp_path):
    with pytest.raises(ValueError, match=message):
        tune.tune(synthetic_examples, tmp_path, TuneParams(**overrides), track=False)
