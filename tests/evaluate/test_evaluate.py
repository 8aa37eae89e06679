"""evaluate/compare on small real Keras models: metrics, choice on val, transfer-vs-scratch, report, errors."""

from __future__ import annotations

import base64
import json
import logging
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from tlpipe.components.common import examples, model_artifact, scoring
from tlpipe.components.common.model_artifact import EVALUATION_FILE
from tlpipe.components.common.synthetic import write_examples
from tlpipe.components.evaluate import core
from tlpipe.components.evaluate import report as html_report

CLASSES = ["class_00", "class_01", "class_02"]


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, model_factory, trained):
    """frozen: always class 0; finetuned: the trained model; scratch: outputs rotated (wrong when it matters).

    Written as the training stage writes them (history.json with one row per epoch); scratch's history is
    cut to 25 epochs, so that each stage's curves have their own length.
    """
    model, history = trained
    root = tmp_path_factory.mktemp("models")
    return {
        "frozen": model_factory.save_artifact(model_factory.constant_model(model, 0), root / "frozen", CLASSES,
                                              history, stage="frozen"),
        "finetuned": model_factory.save_artifact(model, root / "finetuned", CLASSES, history, stage="finetune"),
        "scratch": model_factory.save_artifact(model_factory.permuted_model(model), root / "scratch", CLASSES,
                                               {**history, "epochs": history["epochs"][:25]}, stage="scratch"),
    }


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, candidates, session_examples):
    out = tmp_path_factory.mktemp("evaluation")
    return core.evaluate(session_examples, candidates, out, latency_repeats=3), out


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.external, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag in ("link", "script") or any(str(v).startswith(("http:", "https:", "//")) for v in attrs.values()):
            self.external.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse_report(path) -> _Images:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def assert_inline_pngs(images):
    for img in images:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:40]
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
        assert img.get("alt")


def test_scores_every_model_and_picks_the_best(evaluation):
    result, _ = evaluation
    scored = {s: c["metrics"] for s, c in result["candidates"].items()}
    assert scored["finetuned"]["accuracy"] > 0.8  # learned, well above chance (1/3)
    assert scored["frozen"]["accuracy"] == pytest.approx(1 / 3)
    assert scored["scratch"]["accuracy"] < 0.2
    val = {s: c["val_metrics"] for s, c in result["candidates"].items()}
    assert result["best_stage"] == "finetuned" and result["best_score"] == val["finetuned"]["accuracy"]
    assert result["explanation"] == (
        f"finetuned was chosen for the highest val accuracy ({val['finetuned']['accuracy']:.4f} vs "
        f"frozen {val['frozen']['accuracy']:.4f}, scratch {val['scratch']['accuracy']:.4f}); its test accuracy "
        f"{scored['finetuned']['accuracy']:.4f} is reported, not used to choose.")
    assert result["num_val_examples"] == 9 and result["absent_classes"] == []
    for metrics in scored.values():
        assert np.asarray(metrics["confusion_matrix"]).sum() == 9
        assert 0 <= metrics["ece"] <= 1 and metrics["log_loss"] > 0
        assert set(metrics["per_class"]) == set(CLASSES)
    assert scored["frozen"]["per_class"]["class_00"]["recall"] == 1.0
    assert scored["frozen"]["per_class"]["class_01"]["recall"] == 0.0
    assert scored["finetuned"]["log_loss"] < scored["frozen"]["log_loss"]
    for cand in result["candidates"].values():
        for batch in ("batch_1", "batch_32"):
            assert 0 < cand["latency"][batch]["median_ms"] <= cand["latency"][batch]["p90_ms"]


def test_transfer_vs_scratch_has_a_bootstrap_interval(evaluation):
    tvs = evaluation[0]["transfer_vs_scratch"]
    assert tvs["transfer_stage"] == "finetuned"
    assert tvs["difference"] == pytest.approx(tvs["transfer_accuracy"] - tvs["scratch_accuracy"])
    assert 0 < tvs["ci_low"] <= tvs["difference"] <= tvs["ci_high"]
    assert "95 %" in tvs["line"] and "transfer learning is better" in tvs["line"]


def test_a_stage_at_chance_level_is_said_plainly(evaluation):
    """frozen always answers class_00 (the majority class of the test split, by tie): at chance; finetuned learned."""
    result, out = evaluation
    frozen, finetuned = (result["candidates"][s]["chance"] for s in ("frozen", "finetuned"))
    assert result["at_chance"] == ["frozen", "scratch"]  # scratch answers a wrong class: below the majority rate
    assert frozen["majority_class"] == "class_00" and frozen["majority_rate"] == pytest.approx(1 / 3)
    assert frozen["difference"] == 0 and frozen["ci_low"] <= 0
    assert finetuned["ci_low"] > 0 and not finetuned["at_chance"]
    text = " ".join(" ".join(parse_report(out / core.REPORT_FILE).text).split())
    assert ("frozen is at chance level: test accuracy 0.333 vs 0.333 for always answering class_00 (the majority "
            "class): difference +0.000, bootstrap 95 % interval [+0.000, +0.000]; at chance level.") in text
    assert f"finetuned: {finetuned['line']}" in text and "finetuned is" not in text
    assert "scratch is below chance level: test accuracy" in text  # it answers a wrong class
    assert core.flat_metrics(result)["frozen_above_chance"] == 0.0
    assert core.flat_metrics(result)["finetuned_above_chance"] == 1.0


def test_report_is_self_contained_html(evaluation):
    result, out = evaluation
    report = parse_report(out / core.REPORT_FILE)
    assert not report.external
    assert_inline_pngs(report.images)
    alts = {img["alt"] for img in report.images}
    assert alts == {"reliability diagrams of all stages", "training curves of all stages",
                    "confusion matrix of finetuned", "precision-recall curves of finetuned"}
    text = " ".join(" ".join(report.text).split())
    assert result["explanation"] in text and result["transfer_vs_scratch"]["line"] in text
    assert "on the val split (9 images), by val accuracy" in text
    assert "The test split (9 images) is only reported: it took no part in the choice" in text
    assert "Warning" not in text
    assert json.loads((out / EVALUATION_FILE).read_text())["best_stage"] == "finetuned"


def test_report_curves_plot_every_recorded_epoch_of_every_stage(evaluation, candidates):
    """The data the report plots is history.json as training wrote it: one point per epoch, train and val."""
    histories = {s: core.read_candidate(s, d)["history"] for s, d in candidates.items()}
    series = html_report.training_series(histories)
    assert {s: len(v["epoch"]) for s, v in series.items()} == {"frozen": 40, "finetuned": 40, "scratch": 25}
    fig = html_report.curves_figure(series)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {f"{s}: {m}" for s in candidates for m in ("accuracy", "loss")}
    for stage, folder in candidates.items():
        rows = model_artifact.read_history(folder)["epochs"]
        for metric in ("accuracy", "loss"):
            lines = {line.get_label(): line for line in panels[f"{stage}: {metric}"].get_lines()}
            assert set(lines) == {"train", "val"}
            for split, line in lines.items():
                assert list(line.get_xdata()) == [r["epoch"] + 1 for r in rows]
                assert list(line.get_ydata()) == [r[f"{split}_{metric}"] for r in rows]


def test_report_reliability_and_precision_recall_plot_the_scored_data(evaluation, trained, session_examples):
    result, _ = evaluation
    fig = html_report.reliability_figure(result["candidates"])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {f"{s}: ECE {c['metrics']['ece']:.3f}" for s, c in result["candidates"].items()}
    for stage, cand in result["candidates"].items():
        bins = [b for b in cand["reliability"] if b["count"]]
        ax = panels[f"{stage}: ECE {cand['metrics']['ece']:.3f}"]
        assert [bar.get_height() for bar in ax.patches] == [b["accuracy"] for b in bins]
        assert sum(b["count"] for b in cand["reliability"]) == 9
        assert cand["metrics"]["ece"] == pytest.approx(
            sum(b["count"] / 9 * abs(b["accuracy"] - b["confidence"]) for b in bins))
    images, labels, classes = scoring.load_test_arrays(session_examples)
    probs = scoring.predict_proba(scoring.compiled_predictor(trained[0]), images)
    curves = scoring.precision_recall_curves(probs, labels, classes)
    lines = html_report.precision_recall_figure(curves, "finetuned").axes[0].get_lines()
    assert [line.get_label() for line in lines] == [f"{c} (AP {curves[c]['average_precision']:.2f})" for c in CLASSES]
    assert all(0 < curves[c]["average_precision"] <= 1 for c in CLASSES)
    assert [list(line.get_xdata()) for line in lines] == [curves[c]["recall"] for c in CLASSES]


def test_most_confused_pairs_show_thumbnails(tmp_path, candidates, session_examples):
    result = core.evaluate(session_examples, {"frozen": candidates["frozen"]}, tmp_path, latency_repeats=2)
    pairs = result["most_confused"]
    assert {(p["true"], p["predicted"]) for p in pairs} == {("class_01", "class_00"), ("class_02", "class_00")}
    assert all(p["count"] == 3 for p in pairs)
    thumbs = [i for i in parse_report(tmp_path / core.REPORT_FILE).images if "predicted as" in i["alt"]]
    assert len(thumbs) == 6
    assert_inline_pngs(thumbs)


def test_skipped_scratch_is_listed_not_scored(tmp_path, model_factory, candidates, session_examples):
    skipped = model_factory.skipped_artifact(tmp_path / "scratch", "scratch", "train_scratch=False")
    result = core.evaluate(session_examples, {"frozen": candidates["frozen"], "scratch": skipped}, tmp_path / "out",
                           latency_repeats=2)
    assert result["candidates"]["scratch"] == {"status": "skipped", "reason": "train_scratch=False", "metadata": {}}
    assert result["best_stage"] == "frozen"
    assert "scratch" in result["transfer_vs_scratch"]["line"] and "skipped" in result["transfer_vs_scratch"]["line"]
    assert "skipped: train_scratch=False" in " ".join(parse_report(tmp_path / "out" / core.REPORT_FILE).text)
    assert "scratch_accuracy" not in core.flat_metrics(result)


def test_best_model_artifact_carries_its_evaluation(tmp_path, evaluation, candidates):
    result, _ = evaluation
    best = core.copy_best(result, candidates, tmp_path / "best")
    assert (best / "model.keras").exists() and (best / "class_indices.json").exists()
    evaluation_json = json.loads((best / EVALUATION_FILE).read_text())
    assert evaluation_json["stage"] == "finetuned" and evaluation_json["metrics"]["accuracy"] > 0.8
    assert evaluation_json["metrics"] == result["candidates"]["finetuned"]["metrics"]  # test: what register reads
    assert evaluation_json["val_metrics"] == result["candidates"]["finetuned"]["val_metrics"]
    assert evaluation_json["selection_metric"] == "accuracy" and evaluation_json["selection_split"] == "val"
    assert evaluation_json["classes"] == CLASSES and evaluation_json["absent_classes"] == []
    assert set(evaluation_json["comparison"]) == set(evaluation_json["val_comparison"]) == set(candidates)


def test_lower_is_better_metrics_and_a_val_tie_goes_to_the_simpler_stage():
    def cand(val_acc, val_loss, test_acc, ms):
        return {"val_metrics": {"accuracy": val_acc, "log_loss": val_loss},
                "metrics": {"accuracy": test_acc, "log_loss": 0.0}, "latency": {"batch_1": {"median_ms": ms}}}

    # scratch is the fastest and best on test, finetuned faster than frozen: neither decides a val tie.
    scored = {"scratch": cand(0.9, 0.5, 0.99, 0.5), "finetuned": cand(0.9, 0.2, 0.8, 1.0),
              "frozen": cand(0.9, 0.3, 0.7, 3.0)}
    best, sentence = core._select(scored, "accuracy")
    assert best == "frozen"
    assert sentence == ("frozen was chosen for the highest val accuracy (0.9000 vs finetuned 0.9000, scratch "
                        "0.9000), the simpler stage of those tied with it (finetuned, scratch); its test accuracy "
                        "0.7000 is reported, not used to choose.")
    assert core._select(scored, "log_loss")[0] == "finetuned"
    assert "lowest val log_loss (0.2000 vs frozen 0.3000, scratch 0.5000)" in core._select(scored, "log_loss")[1]
    assert core._select({"scratch": scored["scratch"], "finetuned": scored["finetuned"]}, "accuracy")[0] == "finetuned"


def _rotated_test_examples(source, dest):
    """An `examples` artifact whose test split is the val split of `source` with every label moved one class on.

    A model right on val is then wrong on test, and a model rotated by one class the other way round.
    """
    import tensorflow as tf

    shutil.copytree(source, dest)
    records = []
    for path in examples.split_files(source, "val"):
        for record in examples.iter_records(path):
            feature = tf.train.Example.FromString(record).features.feature
            records.append(examples.encode_example(feature["image"].bytes_list.value[0],
                                                   (feature["label"].int64_list.value[0] + 1) % len(CLASSES),
                                                   feature["sha256"].bytes_list.value[0]))
    shutil.rmtree(dest / "test")
    examples.write_tfrecord(dest / "test" / examples.shard_name(0), records)
    return dest


def test_the_choice_follows_val_when_test_disagrees(tmp_path, model_factory, trained, candidates, session_examples):
    disagreeing = _rotated_test_examples(session_examples, tmp_path / "examples")
    rotated = model_factory.save_artifact(model_factory.permuted_model(trained[0]), tmp_path / "rotated", CLASSES,
                                          trained[1])
    result = core.evaluate(disagreeing, {"frozen": rotated, "finetuned": candidates["finetuned"]},
                           tmp_path / "out", latency_repeats=2)
    frozen, finetuned = (result["candidates"][s] for s in ("frozen", "finetuned"))
    assert finetuned["val_metrics"]["accuracy"] > 0.8 and frozen["val_metrics"]["accuracy"] < 0.2
    assert frozen["metrics"]["accuracy"] > 0.8 and finetuned["metrics"]["accuracy"] < 0.2  # test says frozen
    assert result["best_stage"] == "finetuned"
    assert result["best_score"] == finetuned["val_metrics"]["accuracy"]
    assert result["explanation"].startswith(
        f"finetuned was chosen for the highest val accuracy ({finetuned['val_metrics']['accuracy']:.4f} vs frozen "
        f"{frozen['val_metrics']['accuracy']:.4f}); its test accuracy {finetuned['metrics']['accuracy']:.4f}")


def test_macro_metrics_skip_classes_absent_from_the_split():
    labels = np.array([0, 0, 1, 1])  # no image of class 2
    probs = np.eye(3)[[0, 1, 1, 1]] * 0.9 + 0.1 / 3  # one class-0 image predicted as 1
    metrics = scoring.classification_metrics(probs, labels, CLASSES)
    assert metrics["absent_classes"] == ["class_02"]
    assert metrics["macro_recall"] == pytest.approx((0.5 + 1.0) / 2)  # not (0.5 + 1 + 0) / 3
    assert metrics["macro_precision"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert metrics["per_class"]["class_02"]["support"] == 0
    everything = scoring.classification_metrics(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2]), CLASSES)
    assert everything["absent_classes"] == [] and everything["macro_f1"] == 1.0


def test_absent_test_classes_are_listed_and_warned(tmp_path, caplog, model_factory, candidates):
    few = write_examples(tmp_path / "examples", per_split={"train": 30, "val": 9, "test": 2})  # classes 0 and 1
    logger = logging.getLogger("tlpipe")
    logger.addHandler(caplog.handler)
    try:
        result = core.evaluate(few, {"finetuned": candidates["finetuned"]}, tmp_path / "out", latency_repeats=2)
    finally:
        logger.removeHandler(caplog.handler)
    assert result["absent_classes"] == ["class_02"]
    assert "the test split has no images of class_02: macro precision/recall/F1 are over the 2 classes present" \
        in caplog.text
    metrics = result["candidates"]["finetuned"]["metrics"]
    assert metrics["macro_recall"] == pytest.approx(np.mean([metrics["per_class"][c]["recall"] for c in CLASSES[:2]]))
    assert json.loads((tmp_path / "out" / EVALUATION_FILE).read_text())["absent_classes"] == ["class_02"]
    best = core.copy_best(result, {"finetuned": candidates["finetuned"]}, tmp_path / "best")
    assert model_artifact.read_evaluation(best)["absent_classes"] == ["class_02"]
    text = " ".join(" ".join(parse_report(tmp_path / "out" / core.REPORT_FILE).text).split())
    assert ("Warning: the test split has no images of class_02. Its macro precision, recall and F1 are averaged "
            "over the 2 classes present") in text
    assert "class_02 absent from the test split: not in the macro means" in text


def test_bootstrap_interval_brackets_the_difference():
    same = np.array([1, 0] * 50, dtype=bool)
    diff, low, high = scoring.bootstrap_difference(same, same)
    assert diff == low == high == 0
    better = np.ones(100, dtype=bool)
    worse = np.array([1, 0, 0, 0] * 25, dtype=bool)
    diff, low, high = scoring.bootstrap_difference(better, worse)
    assert diff == pytest.approx(0.75) and 0.6 < low < diff < high < 0.9


def test_bad_inputs_fail_with_named_errors(tmp_path, model_factory, trained, candidates, session_examples):
    with pytest.raises(ValueError, match="selection_metric"):
        core.evaluate(session_examples, candidates, tmp_path, selection_metric="speed")
    with pytest.raises(FileNotFoundError, match="finetuned"):
        core.evaluate(session_examples, {"finetuned": tmp_path}, tmp_path / "out")
    skipped = model_factory.skipped_artifact(tmp_path / "s", "scratch", "off")
    with pytest.raises(ValueError, match="every candidate was skipped"):
        core.evaluate(session_examples, {"scratch": skipped}, tmp_path / "out")
    other = model_factory.save_artifact(trained[0], tmp_path / "other", ["cod", "eel", "ray"])
    with pytest.raises(ValueError, match="classes"):
        core.evaluate(session_examples, {"frozen": other}, tmp_path / "out")


def test_logs_metrics_and_report_to_a_nested_mlflow_run(stack, evaluation):
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils

    result, out = evaluation
    run_id = core.log_to_mlflow(dict(result), out, kfp_run_id="evaluate-test", experiment="evaluate-test")
    run = MlflowClient().get_run(run_id)
    parent_id = mlflow_utils.parent_run_id("evaluate-test", "evaluate-test")
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    chosen = result["candidates"]["finetuned"]
    assert run.data.metrics["finetuned_accuracy"] == chosen["metrics"]["accuracy"]
    assert run.data.metrics["finetuned_val_accuracy"] == chosen["val_metrics"]["accuracy"]
    assert run.data.params["selection_metric"] == "accuracy" and run.data.params["selection_split"] == "val"
    assert {a.path for a in MlflowClient().list_artifacts(run_id)} >= {"report.html", "evaluation.json"}
    parent = MlflowClient().get_run(parent_id).data
    assert parent.params["best_stage"] == "finetuned"
    assert parent.metrics["test_accuracy"] == chosen["metrics"]["accuracy"]
    assert parent.metrics["val_accuracy"] == chosen["val_metrics"]["accuracy"]
    assert parent.metrics["test_macro_f1"] == chosen["metrics"]["macro_f1"]


def test_report_shows_the_tune_steps_choice_and_study_plots(tmp_path, candidates, session_examples):
    """The tune step's own output (a real, small search) appears in the report: its choice and Optuna's plots."""
    import keras

    from tlpipe.components.train import tune
    from tlpipe.components.train.params import TrainParams, TuneParams

    inputs = keras.Input(batch_shape=(None, 32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, x).save(tmp_path / "backbone.keras")
    best = tune.tune(session_examples, tmp_path / "tune", TuneParams(
        tune_trials=3, tune_max_epochs=3, tune_space='{"feature_cache": "on"}'),
        TrainParams(weights=str(tmp_path / "backbone.keras"), batch_size=8), track=False)
    result = core.evaluate(session_examples, candidates, tmp_path / "out", latency_repeats=1,
                           tune_dir=tmp_path / "tune")
    report = parse_report(tmp_path / "out" / core.REPORT_FILE)
    text = " ".join(" ".join(report.text).split())
    assert "Recipe search (tune=frozen)" in text and best["line"] in text
    assert result["tune"]["train_params"] == best["train_params"]
    plots = [img for img in report.images if img["alt"].startswith("tune: ")]
    assert {img["alt"] for img in plots} == {f"tune: {name.removesuffix('.png').replace('_', ' ')}"
                                            for name in best["plots"]} and plots
    assert_inline_pngs(plots)
    assert base64.b64decode(plots[0]["src"].split(",", 1)[1]) == (tmp_path / "tune" / best["plots"][0]).read_bytes()
