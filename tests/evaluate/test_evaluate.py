"""evaluate/compare on small real Keras models: metrics, choice, transfer-vs-scratch, report, errors."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from tlpipe.components.common import scoring
from tlpipe.components.common.model_artifact import EVALUATION_FILE
from tlpipe.components.evaluate import core

CLASSES = ["class_00", "class_01", "class_02"]


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, model_factory, trained):
    """frozen: always class 0; finetuned: the trained model; scratch: outputs rotated (wrong when it matters)."""
    model, history = trained
    root = tmp_path_factory.mktemp("models")
    return {
        "frozen": model_factory.save_artifact(model_factory.constant_model(model, 0), root / "frozen", CLASSES,
                                              history),
        "finetuned": model_factory.save_artifact(model, root / "finetuned", CLASSES, history),
        "scratch": model_factory.save_artifact(model_factory.permuted_model(model), root / "scratch", CLASSES,
                                               history, history_prefix="train_"),  # train_accuracy spelling
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
    assert result["best_stage"] == "finetuned" and result["best_score"] == scored["finetuned"]["accuracy"]
    assert "finetuned" in result["explanation"] and "frozen" in result["explanation"]
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


def test_report_is_self_contained_html(evaluation):
    result, out = evaluation
    report = parse_report(out / core.REPORT_FILE)
    assert not report.external
    assert_inline_pngs(report.images)
    alts = " ".join(img["alt"] for img in report.images)
    assert "training curves" in alts and "confusion matrix of finetuned" in alts
    text = " ".join(report.text)
    assert result["explanation"] in text and result["transfer_vs_scratch"]["line"] in text
    assert json.loads((out / EVALUATION_FILE).read_text())["best_stage"] == "finetuned"


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
    assert set(evaluation_json["comparison"]) == {"frozen", "finetuned", "scratch"}


def test_lower_is_better_metrics_and_latency_tie_break():
    def cand(acc, loss, ms):
        return {"metrics": {"accuracy": acc, "log_loss": loss}, "latency": {"batch_1": {"median_ms": ms}}}

    scored = {"a": cand(0.9, 0.5, 3.0), "b": cand(0.9, 0.2, 1.0), "c": cand(0.8, 0.1, 0.5)}
    assert core._select(scored, "accuracy")[0] == "b"
    assert "tied with a" in core._select(scored, "accuracy")[1]
    assert core._select(scored, "log_loss")[0] == "c"


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
    assert run.data.tags["mlflow.parentRunId"] == mlflow_utils.parent_run_id("evaluate-test", "evaluate-test")
    assert run.data.metrics["finetuned_accuracy"] == result["candidates"]["finetuned"]["metrics"]["accuracy"]
    assert run.data.params["selection_metric"] == "accuracy"
    assert {a.path for a in MlflowClient().list_artifacts(run_id)} >= {"report.html", "evaluation.json"}
