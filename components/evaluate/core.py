"""evaluate/compare (docs/DESIGN.md §5): score every candidate on val and test, choose on val, report test, say why.

`evaluate()` works on plain folders: the `examples` artifact and one `model` artifact per stage (a stage
switched off arrives as a placeholder holding only `skipped.json`), read through
`tlpipe.components.common.model_artifact`. The stage is chosen on the val split (selecting on test would make
the reported test figures optimistic); the test split is only reported. It writes `evaluation.json` and the self-contained `report.html`
into an output folder; `copy_best()` builds the `best_model` artifact and `log_to_mlflow()` records
everything in the stage's nested MLflow run. The metrics are those of `tlpipe.components.common.scoring`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tlpipe.components.common import model_artifact, scoring, tune_result
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.model_artifact import EVALUATION_FILE, ModelArtifactError
from tlpipe.components.evaluate import report as html_report
from tlpipe.components.evaluate.params import EvaluateParams

log = get_logger("evaluate")

REPORT_FILE = "report.html"
SCRATCH_STAGE = "scratch"
# From the simplest stage to the most complex: frozen trains only the head on a fixed backbone, finetuned also
# the top of the backbone, scratch every weight. A tie on val goes to the simpler one: it generalises at least
# as well and costs less to retrain. Latency does not break ties: it is too noisy (16 vs 36 ms for one network).
SIMPLICITY_ORDER = ("frozen", "finetuned", SCRATCH_STAGE)
THUMBNAILS_PER_PAIR = 4


def _optional(read, model_dir: str | Path, default):
    """A JSON file of the artifact that a hand-made `model` artifact may lack: `default` when it is missing."""
    try:
        return read(model_dir)
    except ModelArtifactError:
        return default


def read_candidate(stage: str, model_dir: str | Path) -> dict:
    """What a `model` artifact folder holds: {"status": "skipped", "reason"} or {"status": "ready", ...}."""
    skipped = model_artifact.read_skipped(model_dir)
    if skipped is not None:
        return {"status": "skipped", "reason": skipped.get("reason", "stage switched off")}
    try:
        model_artifact.model_file(model_dir)
    except ModelArtifactError as exc:
        raise ModelArtifactError(f"{stage} model artifact {model_dir} holds neither {model_artifact.MODEL_FILE} "
                                 f"nor {model_artifact.SKIPPED_FILE} (docs/DESIGN.md §4)") from exc
    return {"status": "ready", "path": str(model_dir),
            "history": _optional(model_artifact.read_history, model_dir, {}),
            "classes": _optional(model_artifact.read_classes, model_dir, None),
            "metadata": _optional(model_artifact.read_metadata, model_dir, {})}


def _simplicity(stage: str) -> int:
    """Rank of `stage` in SIMPLICITY_ORDER; a stage of another name after the known ones."""
    return SIMPLICITY_ORDER.index(stage) if stage in SIMPLICITY_ORDER else len(SIMPLICITY_ORDER)


def _select(scored: dict[str, dict], metric: str) -> tuple[str, str]:
    """The best stage by its val `metric` (a tie goes to the simpler stage) and a one-sentence explanation.

    The test metrics only appear in the sentence: they are reported, never used to choose.
    """
    higher = scoring.METRIC_DIRECTIONS[metric]

    def val(stage):
        return scored[stage]["val_metrics"][metric]

    ranked = sorted(scored, key=lambda s: (-val(s) if higher else val(s), _simplicity(s)))
    best = ranked[0]
    others = ", ".join(f"{s} {val(s):.4f}" for s in ranked[1:])
    sentence = f"{best} was chosen for the {'highest' if higher else 'lowest'} val {metric} ({val(best):.4f}"
    sentence += f" vs {others})" if others else ", the only scored candidate)"
    tied = [s for s in ranked[1:] if val(s) == val(best)]
    if tied:
        sentence += f", the simpler stage of those tied with it ({', '.join(tied)})"
    test = scored[best]["metrics"][metric]
    return best, f"{sentence}; its test {metric} {test:.4f} is reported, not used to choose."


def _transfer_vs_scratch(candidates: dict[str, dict], correct: dict[str, np.ndarray]) -> dict:
    """Test accuracy of the transfer-learning stage best on val vs the from-scratch baseline, bootstrap 95 % CI."""
    scratch = candidates.get(SCRATCH_STAGE)
    transfer = [s for s in correct if s != SCRATCH_STAGE]
    if scratch is None:
        return {"line": "No from-scratch baseline was trained, so transfer learning was not compared with it."}
    if scratch["status"] != "scored":
        return {"line": f"The from-scratch baseline was skipped ({scratch.get('reason', '')}); "
                        f"transfer learning was not compared with it."}
    if not transfer:
        return {"line": "No transfer-learning model was scored, so there is nothing to compare scratch with."}
    best_transfer = min(transfer, key=lambda s: (-candidates[s]["val_metrics"]["accuracy"], _simplicity(s)))
    diff, low, high = scoring.bootstrap_difference(correct[best_transfer], correct[SCRATCH_STAGE])
    verdict = ("transfer learning is better" if low > 0 else "scratch is better" if high < 0
               else "the difference is not significant at 95 %")
    return {"transfer_stage": best_transfer, "transfer_accuracy": float(correct[best_transfer].mean()),
            "scratch_accuracy": float(correct[SCRATCH_STAGE].mean()), "difference": diff,
            "ci_low": low, "ci_high": high,
            "line": (f"{best_transfer} (transfer, the best on val) {correct[best_transfer].mean():.3f} vs scratch "
                     f"{correct[SCRATCH_STAGE].mean():.3f} test accuracy: difference {diff:+.3f}, bootstrap 95 % "
                     f"interval [{low:+.3f}, {high:+.3f}] over {len(correct[SCRATCH_STAGE])} images; {verdict}.")}


def chance_level(correct: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Test accuracy vs always answering the split's most frequent class: paired bootstrap 95 % interval.

    `at_chance` when the interval of the difference reaches 0 (the accuracy is within the bootstrap interval of
    the majority-class rate) or lies below it: the model has not shown that it learned anything.
    """
    majority = int(np.bincount(labels, minlength=len(classes)).argmax())
    diff, low, high = scoring.bootstrap_difference(correct, labels == majority)
    at_chance = bool(low <= 0)
    accuracy, rate = float(correct.mean()), float((labels == majority).mean())
    verdict = "above chance" if not at_chance else "below chance level" if high < 0 else "at chance level"
    return {"majority_class": classes[majority], "majority_rate": rate, "difference": diff, "ci_low": low,
            "ci_high": high, "at_chance": at_chance, "verdict": verdict,
            "line": (f"test accuracy {accuracy:.3f} vs {rate:.3f} for always answering {classes[majority]} "
                     f"(the majority class): difference {diff:+.3f}, bootstrap 95 % interval [{low:+.3f}, "
                     f"{high:+.3f}]; {verdict}.")}


def _warn_absent(split: str, metrics: dict, classes: list[str]) -> None:
    if metrics["absent_classes"]:
        log.warning("the %s split has no images of %s: macro precision/recall/F1 are over the %d classes present",
                    split, ", ".join(metrics["absent_classes"]), len(classes) - len(metrics["absent_classes"]))


def evaluate(
    examples_dir: str | Path,
    model_dirs: dict[str, str | Path],
    out_dir: str | Path,
    selection_metric: str = EvaluateParams.selection_metric,
    top_k: int = EvaluateParams.top_k,
    metadata: dict[str, dict] | None = None,
    latency_repeats: int = EvaluateParams.latency_repeats,
    tune_dir: str | Path | None = None,
) -> dict:
    """Score every model of `model_dirs` ({stage: folder}) on val and test, choose on val; write the report.

    `metadata` ({stage: KFP artifact metadata}) is recorded per candidate; a stage without an entry gets its
    artifact's metadata.json. `tune_dir`: the tune step's output (best_params.json and the study's plots), shown
    in the report. Writes evaluation.json and report.html into `out_dir`; returns the evaluation:
    per-candidate test `metrics`, `val_metrics`, reliability bins and latency, best_stage, best_score (its val
    `selection_metric`), explanation, absent_classes, transfer_vs_scratch, most_confused pairs, at_chance (the
    stages whose test accuracy is within the bootstrap interval of the majority-class rate, see chance_level).
    """
    EvaluateParams(selection_metric=selection_metric, top_k=top_k, latency_repeats=latency_repeats).validate()
    if not model_dirs:
        raise ValueError("no candidate models given")
    metadata = metadata or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    images, labels, classes = scoring.load_test_arrays(examples_dir)
    val_images, val_labels, _ = scoring.load_test_arrays(examples_dir, "val")
    log.info("val split: %d images, test split: %d images, %d classes", len(val_labels), len(labels), len(classes))
    candidates: dict[str, dict] = {}
    correct: dict[str, np.ndarray] = {}
    probabilities: dict[str, np.ndarray] = {}
    histories: dict[str, dict] = {}
    for stage, model_dir in model_dirs.items():
        info = read_candidate(stage, model_dir)
        given = metadata[stage] if stage in metadata else info.get("metadata", {})
        meta = {k: v for k, v in given.items() if isinstance(v, str | int | float | bool)}
        if info["status"] == "skipped":
            log.info("%s: skipped upstream (%s); not scored", stage, info["reason"])
            candidates[stage] = {"status": "skipped", "reason": info["reason"], "metadata": meta}
            continue
        if info["classes"] is not None and list(info["classes"]) != classes:
            raise ValueError(f"{stage} model was trained on classes {info['classes']} but the test split has "
                             f"{classes}; evaluate models and examples of the same pipeline run")
        log.info("%s: scoring %s", stage, info["path"])
        model = model_artifact.load_model(info["path"])
        predict = scoring.compiled_predictor(model)
        val_metrics = scoring.classification_metrics(scoring.predict_proba(predict, val_images), val_labels,
                                                     classes, top_k=top_k)
        probs = scoring.predict_proba(predict, images)
        metrics = scoring.classification_metrics(probs, labels, classes, top_k=top_k)
        latency = {f"batch_{b}": scoring.measure_latency(predict, images, b, repeats=latency_repeats)
                   for b in (1, 32)}
        log.info("%s: val %s %.4f; test accuracy %.4f, macro F1 %.4f; %.2f ms/image at batch 1", stage,
                 selection_metric, val_metrics[selection_metric], metrics["accuracy"], metrics["macro_f1"],
                 latency["batch_1"]["median_ms"])
        correct[stage] = probs.argmax(axis=1) == labels
        chance = chance_level(correct[stage], labels, classes)
        if chance["at_chance"]:
            log.warning("%s is %s: %s", stage, chance["verdict"], chance["line"])
        candidates[stage] = {"status": "scored", "metrics": metrics, "val_metrics": val_metrics,
                             "reliability": scoring.reliability_bins(probs, labels), "latency": latency,
                             "chance": chance, "metadata": meta}
        probabilities[stage] = probs
        histories[stage] = info["history"]
    scored = {s: c for s, c in candidates.items() if c["status"] == "scored"}
    if not scored:
        raise ValueError(f"every candidate was skipped ({', '.join(candidates)}): there is no model to evaluate")

    best, explanation = _select(scored, selection_metric)
    log.info("choice: %s", explanation)
    best_metrics = scored[best]["metrics"]
    _warn_absent("val", scored[best]["val_metrics"], classes)
    _warn_absent("test", best_metrics, classes)
    confused = scoring.most_confused_pairs(best_metrics["confusion_matrix"], classes)
    result = {
        "selection_metric": selection_metric, "selection_split": "val", "top_k": top_k, "classes": classes,
        "num_val_examples": int(len(val_labels)), "num_test_examples": int(len(labels)),
        "latency_repeats": latency_repeats, "absent_classes": best_metrics["absent_classes"],
        "best_stage": best, "best_score": float(scored[best]["val_metrics"][selection_metric]),
        "explanation": explanation, "candidates": candidates, "most_confused": confused,
        "transfer_vs_scratch": _transfer_vs_scratch(candidates, correct),
        "at_chance": [s for s, c in scored.items() if c["chance"]["at_chance"]],
    }
    log.info("transfer vs scratch: %s", result["transfer_vs_scratch"]["line"])

    predicted = probabilities[best].argmax(axis=1)
    thumbs = [[html_report.thumbnail(images[i]) for i in np.flatnonzero(
        (labels == pair["true_index"]) & (predicted == pair["predicted_index"]))[:THUMBNAILS_PER_PAIR]]
        for pair in confused]
    figures = html_report.figures(result, histories, scoring.precision_recall_curves(probabilities[best], labels,
                                                                                     classes))
    result["tune"] = read_tune(tune_dir)
    figures.update(result["tune"].pop("figures", {}))
    (out_dir / REPORT_FILE).write_text(html_report.render(result, figures, thumbs), encoding="utf-8")
    (out_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=2))
    log.info("wrote %s and %s", out_dir / REPORT_FILE, out_dir / EVALUATION_FILE)
    return result


def read_tune(tune_dir: str | Path | None) -> dict:
    """The tune step's choice (its `tune_result`) and its study plots as data URIs; {} without a tune step."""
    if tune_dir is None:
        return {}
    best = tune_result.read(tune_dir)
    figures = {f"tune:{name}": html_report.data_uri(png) for name, png in tune_result.plots(tune_dir, best).items()}
    keep = ("tune", "line", "cv_accuracy", "train_params", "trials", "folds", "finetune_params", "finetune")
    return {**{k: best[k] for k in keep if k in best}, "figures": figures}


def copy_best(result: dict, model_dirs: dict[str, str | Path], dest: str | Path) -> Path:
    """The `best_model` artifact: a copy of the chosen model folder plus evaluation.json (test and val metrics)."""
    best = result["best_stage"]
    dest = Path(dest)
    shutil.copytree(model_dirs[best], dest, dirs_exist_ok=True)
    chosen = result["candidates"][best]
    metric = result["selection_metric"]
    evaluation = {"stage": best, "metrics": chosen["metrics"], "val_metrics": chosen["val_metrics"],
                  "latency": chosen["latency"], "selection_metric": metric, "selection_split": "val",
                  "classes": result["classes"], "absent_classes": result["absent_classes"],
                  "explanation": result["explanation"],
                  "mlflow_run_ids": {s: c["metadata"]["mlflow_run_id"] for s, c in result["candidates"].items()
                                     if c.get("metadata", {}).get("mlflow_run_id")},
                  "comparison": {s: c["metrics"][metric] for s, c in result["candidates"].items()
                                 if c["status"] == "scored"},
                  "val_comparison": {s: c["val_metrics"][metric] for s, c in result["candidates"].items()
                                     if c["status"] == "scored"}}
    if result.get("mlflow_run_id"):
        evaluation["mlflow_run_ids"]["evaluate"] = result["mlflow_run_id"]
    model_artifact.write_evaluation(dest, evaluation)
    return dest


def flat_metrics(result: dict) -> dict[str, float]:
    """Scalars per model, e.g. `frozen_accuracy` (test), `frozen_val_accuracy`, `finetuned_latency_ms_b1`."""
    flat = {}
    for stage, cand in result["candidates"].items():
        if cand["status"] != "scored":
            continue
        for name in scoring.METRIC_DIRECTIONS:
            flat[f"{stage}_{name}"] = float(cand["metrics"][name])
            flat[f"{stage}_val_{name}"] = float(cand["val_metrics"][name])
        lat = cand["latency"]
        flat[f"{stage}_latency_ms_b1"] = lat["batch_1"]["median_ms"]
        flat[f"{stage}_latency_ms_b1_p90"] = lat["batch_1"]["p90_ms"]
        flat[f"{stage}_latency_ms_per_image_b32"] = lat["batch_32"]["median_ms_per_image"]
        flat[f"{stage}_above_chance"] = float(not cand["chance"]["at_chance"])
    tvs = result["transfer_vs_scratch"]
    if "difference" in tvs:
        flat.update(transfer_minus_scratch=tvs["difference"], transfer_minus_scratch_ci_low=tvs["ci_low"],
                    transfer_minus_scratch_ci_high=tvs["ci_high"])
    return flat


def log_to_mlflow(result: dict, out_dir: str | Path, kfp_run_id: str, experiment: str) -> str:
    """Log metrics, the report and evaluation.json to the nested `evaluate` MLflow run; returns its id.

    The parent run gets the chosen stage (param `best_stage`) and its `test_<metric>` and `val_<metric>`.
    """
    import mlflow

    from tlpipe.components.common import mlflow_utils

    mlflow_utils.connect()
    with mlflow_utils.stage_run("evaluate", kfp_run_id=kfp_run_id, experiment=experiment,
                                tags={"best_stage": result["best_stage"]}) as run:
        mlflow.log_params({"selection_metric": result["selection_metric"], "top_k": result["top_k"],
                           "candidates": ",".join(result["candidates"]),
                           "selection_split": result["selection_split"],
                           "num_val_examples": result["num_val_examples"],
                           "num_test_examples": result["num_test_examples"]})
        mlflow.log_metrics(flat_metrics(result))
        chance = "".join(f"\n\n{s} is {result['candidates'][s]['chance']['verdict']}: "
                         f"{result['candidates'][s]['chance']['line']}" for s in result["at_chance"])
        mlflow.set_tag("mlflow.note.content",
                       f"{result['explanation']}\n\n{result['transfer_vs_scratch']['line']}{chance}")
        mlflow.log_artifact(str(Path(out_dir) / REPORT_FILE))
        mlflow.log_artifact(str(Path(out_dir) / EVALUATION_FILE))
        result["mlflow_run_id"] = run.info.run_id
    chosen = result["candidates"][result["best_stage"]]
    mlflow_utils.log_to_parent(kfp_run_id, experiment, params={"best_stage": result["best_stage"]}, metrics={
        f"{split}_{name}": chosen[key][name] for split, key in (("test", "metrics"), ("val", "val_metrics"))
        for name in scoring.METRIC_DIRECTIONS})
    return result["mlflow_run_id"]
