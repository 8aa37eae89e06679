"""evaluate/compare (docs/DESIGN.md §5): score every candidate model on the test split, pick the best, say why.

`evaluate()` works on plain folders: the `examples` artifact and one `model` artifact per stage (a stage
switched off arrives as a placeholder holding only `skipped.json`), read through
`tlpipe.components.common.model_artifact`. It writes `evaluation.json` and the self-contained `report.html`
into an output folder; `copy_best()` builds the `best_model` artifact and `log_to_mlflow()` records
everything in the stage's nested MLflow run. The metrics are those of `tlpipe.components.common.scoring`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tlpipe.components.common import model_artifact, scoring
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.model_artifact import EVALUATION_FILE, ModelArtifactError
from tlpipe.components.evaluate import report as html_report
from tlpipe.components.evaluate.params import EvaluateParams

log = get_logger("evaluate")

REPORT_FILE = "report.html"
SCRATCH_STAGE = "scratch"
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


def _select(scored: dict[str, dict], metric: str) -> tuple[str, str]:
    """The best stage by `metric` (ties broken by batch-1 latency) and a one-sentence explanation."""
    higher = scoring.METRIC_DIRECTIONS[metric]

    def key(stage):
        value = scored[stage]["metrics"][metric]
        return (-value if higher else value, scored[stage]["latency"]["batch_1"]["median_ms"])

    ranked = sorted(scored, key=key)
    best = ranked[0]
    value = scored[best]["metrics"][metric]
    others = ", ".join(f"{s} {scored[s]['metrics'][metric]:.4f}" for s in ranked[1:])
    sentence = f"{best} was chosen for the {'highest' if higher else 'lowest'} test {metric} ({value:.4f}"
    sentence += f" vs {others})" if others else ", the only scored candidate)"
    tied = [s for s in ranked[1:] if scored[s]["metrics"][metric] == value]
    if tied:
        sentence += (f"; tied with {', '.join(tied)} and faster at "
                     f"{scored[best]['latency']['batch_1']['median_ms']:.2f} ms/image")
    return best, sentence + "."


def _transfer_vs_scratch(candidates: dict[str, dict], correct: dict[str, np.ndarray]) -> dict:
    """Accuracy of the best transfer-learning stage vs the from-scratch baseline, with a bootstrap 95 % CI."""
    scratch = candidates.get(SCRATCH_STAGE)
    transfer = [s for s in correct if s != SCRATCH_STAGE]
    if scratch is None:
        return {"line": "No from-scratch baseline was trained, so transfer learning was not compared with it."}
    if scratch["status"] != "scored":
        return {"line": f"The from-scratch baseline was skipped ({scratch.get('reason', '')}); "
                        f"transfer learning was not compared with it."}
    if not transfer:
        return {"line": "No transfer-learning model was scored, so there is nothing to compare scratch with."}
    best_transfer = max(transfer, key=lambda s: correct[s].mean())
    diff, low, high = scoring.bootstrap_difference(correct[best_transfer], correct[SCRATCH_STAGE])
    verdict = ("transfer learning is better" if low > 0 else "scratch is better" if high < 0
               else "the difference is not significant at 95 %")
    return {"transfer_stage": best_transfer, "transfer_accuracy": float(correct[best_transfer].mean()),
            "scratch_accuracy": float(correct[SCRATCH_STAGE].mean()), "difference": diff,
            "ci_low": low, "ci_high": high,
            "line": (f"{best_transfer} (transfer) {correct[best_transfer].mean():.3f} vs scratch "
                     f"{correct[SCRATCH_STAGE].mean():.3f} test accuracy: difference {diff:+.3f}, bootstrap 95 % "
                     f"interval [{low:+.3f}, {high:+.3f}] over {len(correct[SCRATCH_STAGE])} images; {verdict}.")}


def evaluate(
    examples_dir: str | Path,
    model_dirs: dict[str, str | Path],
    out_dir: str | Path,
    selection_metric: str = EvaluateParams.selection_metric,
    top_k: int = EvaluateParams.top_k,
    metadata: dict[str, dict] | None = None,
    latency_repeats: int = EvaluateParams.latency_repeats,
) -> dict:
    """Score every model of `model_dirs` ({stage: folder}) on the test split; write evaluation.json and report.html.

    `metadata` ({stage: KFP artifact metadata}) is recorded per candidate; a stage without an entry gets its
    artifact's metadata.json. Returns the evaluation: per-candidate metrics and latency, best_stage, best_score,
    explanation, transfer_vs_scratch, most_confused pairs.
    """
    EvaluateParams(selection_metric=selection_metric, top_k=top_k, latency_repeats=latency_repeats).validate()
    if not model_dirs:
        raise ValueError("no candidate models given")
    metadata = metadata or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    images, labels, classes = scoring.load_test_arrays(examples_dir)
    log.info("test split: %d images, %d classes", len(labels), len(classes))
    candidates: dict[str, dict] = {}
    correct: dict[str, np.ndarray] = {}
    predictions: dict[str, np.ndarray] = {}
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
        probs = scoring.predict_proba(predict, images)
        metrics = scoring.classification_metrics(probs, labels, classes, top_k=top_k)
        latency = {f"batch_{b}": scoring.measure_latency(predict, images, b, repeats=latency_repeats)
                   for b in (1, 32)}
        log.info("%s: accuracy %.4f, macro F1 %.4f, %.2f ms/image at batch 1", stage, metrics["accuracy"],
                 metrics["macro_f1"], latency["batch_1"]["median_ms"])
        candidates[stage] = {"status": "scored", "metrics": metrics, "latency": latency, "metadata": meta}
        predictions[stage] = probs.argmax(axis=1)
        correct[stage] = predictions[stage] == labels
        histories[stage] = info["history"]
    scored = {s: c for s, c in candidates.items() if c["status"] == "scored"}
    if not scored:
        raise ValueError(f"every candidate was skipped ({', '.join(candidates)}): there is no model to evaluate")

    best, explanation = _select(scored, selection_metric)
    log.info("choice: %s", explanation)
    best_metrics = scored[best]["metrics"]
    confused = scoring.most_confused_pairs(best_metrics["confusion_matrix"], classes)
    result = {
        "selection_metric": selection_metric, "top_k": top_k, "classes": classes,
        "num_test_examples": int(len(labels)), "latency_repeats": latency_repeats,
        "best_stage": best, "best_score": float(best_metrics[selection_metric]), "explanation": explanation,
        "candidates": candidates, "most_confused": confused,
        "transfer_vs_scratch": _transfer_vs_scratch(candidates, correct),
    }
    log.info("transfer vs scratch: %s", result["transfer_vs_scratch"]["line"])

    thumbs = [[html_report.thumbnail(images[i]) for i in np.flatnonzero(
        (labels == pair["true_index"]) & (predictions[best] == pair["predicted_index"]))[:THUMBNAILS_PER_PAIR]]
        for pair in confused]
    confusion_uri = html_report.confusion_figure(best_metrics["confusion_matrix"], classes,
                                                 f"{best} on {len(labels)} test images")
    document = html_report.render(result, html_report.curves_figure(histories), confusion_uri, thumbs)
    (out_dir / REPORT_FILE).write_text(document, encoding="utf-8")
    (out_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=2))
    log.info("wrote %s and %s", out_dir / REPORT_FILE, out_dir / EVALUATION_FILE)
    return result


def copy_best(result: dict, model_dirs: dict[str, str | Path], dest: str | Path) -> Path:
    """The `best_model` artifact: a copy of the chosen model folder plus evaluation.json (its test metrics)."""
    best = result["best_stage"]
    dest = Path(dest)
    shutil.copytree(model_dirs[best], dest, dirs_exist_ok=True)
    chosen = result["candidates"][best]
    evaluation = {"stage": best, "metrics": chosen["metrics"], "latency": chosen["latency"],
                  "selection_metric": result["selection_metric"], "classes": result["classes"],
                  "explanation": result["explanation"],
                  "mlflow_run_ids": {s: c["metadata"]["mlflow_run_id"] for s, c in result["candidates"].items()
                                     if c.get("metadata", {}).get("mlflow_run_id")},
                  "comparison": {s: c["metrics"][result["selection_metric"]]
                                 for s, c in result["candidates"].items() if c["status"] == "scored"}}
    if result.get("mlflow_run_id"):
        evaluation["mlflow_run_ids"]["evaluate"] = result["mlflow_run_id"]
    model_artifact.write_evaluation(dest, evaluation)
    return dest


def flat_metrics(result: dict) -> dict[str, float]:
    """Scalars per model, e.g. `frozen_accuracy`, `finetuned_latency_ms_b1`."""
    flat = {}
    for stage, cand in result["candidates"].items():
        if cand["status"] != "scored":
            continue
        for name in scoring.METRIC_DIRECTIONS:
            flat[f"{stage}_{name}"] = float(cand["metrics"][name])
        lat = cand["latency"]
        flat[f"{stage}_latency_ms_b1"] = lat["batch_1"]["median_ms"]
        flat[f"{stage}_latency_ms_b1_p90"] = lat["batch_1"]["p90_ms"]
        flat[f"{stage}_latency_ms_per_image_b32"] = lat["batch_32"]["median_ms_per_image"]
    tvs = result["transfer_vs_scratch"]
    if "difference" in tvs:
        flat.update(transfer_minus_scratch=tvs["difference"], transfer_minus_scratch_ci_low=tvs["ci_low"],
                    transfer_minus_scratch_ci_high=tvs["ci_high"])
    return flat


def log_to_mlflow(result: dict, out_dir: str | Path, kfp_run_id: str, experiment: str) -> str:
    """Log metrics, the report and evaluation.json to the nested `evaluate` MLflow run; returns its id."""
    import mlflow

    from tlpipe.components.common import mlflow_utils

    mlflow_utils.connect()
    with mlflow_utils.stage_run("evaluate", kfp_run_id=kfp_run_id, experiment=experiment,
                                tags={"best_stage": result["best_stage"]}) as run:
        mlflow.log_params({"selection_metric": result["selection_metric"], "top_k": result["top_k"],
                           "candidates": ",".join(result["candidates"]),
                           "num_test_examples": result["num_test_examples"]})
        mlflow.log_metrics(flat_metrics(result))
        mlflow.set_tag("mlflow.note.content", f"{result['explanation']}\n\n{result['transfer_vs_scratch']['line']}")
        mlflow.log_artifact(str(Path(out_dir) / REPORT_FILE))
        mlflow.log_artifact(str(Path(out_dir) / EVALUATION_FILE))
        result["mlflow_run_id"] = run.info.run_id
    return result["mlflow_run_id"]
