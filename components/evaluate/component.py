"""KFP adapter of evaluate/compare (docs/DESIGN.md §5); the pipeline wraps `evaluate_op` in dsl.component."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate_op(
    examples: Input[Dataset],
    frozen_model: Input[Model],
    finetuned_model: Input[Model],
    scratch_model: Input[Model],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[HTML],
    best_model: Output[Model],
    selection_metric: str = "accuracy",
    top_k: int = 3,
    experiment: str = "fish-classification",
    kfp_run_id: str = "local",
    latency_repeats: int = 20,
    tune_result: Input[Artifact] = None,
) -> NamedTuple("EvaluateOutputs", [("best_stage", str), ("best_score", float), ("explanation", str)]):
    """Score the frozen, fine-tuned and scratch models on val and test, choose on val, pass on the best one.

    The test split is only reported, never used to choose. A stage switched off upstream arrives as a
    placeholder (`skipped.json`) and is listed, not scored. The comparison goes to the KFP UI (metrics,
    confusion matrix, HTML report), to a nested MLflow run and, the chosen stage and its metrics, to the parent.

    Args:
        examples: The `examples` artifact of preprocess; its val split chooses, its test split is reported.
        frozen_model: The `model` artifact of train-frozen.
        finetuned_model: The `model` artifact of finetune, or the placeholder of a skipped finetune.
        scratch_model: The `model` artifact of train-scratch, or the placeholder of a skipped baseline.
        metrics: Output: scalars per model (`<stage>_<metric>` on test, `<stage>_val_<metric>`, latencies) and
            the transfer-vs-scratch gap.
        confusion_matrix: Output: the test confusion matrix of the chosen model, with the class names.
        report: Output: the self-contained HTML comparison report (a file named `report.html`).
        best_model: Output: a copy of the chosen `model` artifact plus its `evaluation.json`.
        selection_metric: The val metric that picks the best model: accuracy, top_k_accuracy, macro_f1,
            macro_precision, macro_recall (higher is better), log_loss or ece (lower is better).
        top_k: k of the top-k accuracy (capped at the number of classes).
        experiment: The MLflow experiment of the pipeline's parent run.
        kfp_run_id: The pipeline run whose MLflow parent run this step logs under ("local": $KFP_RUN_ID).
        latency_repeats: Timed CPU inference runs per batch size (1 and 32), after warm-up.
        tune_result: The tune step's output (optional): the report shows its choice and the study's plots.

    Returns:
        EvaluateOutputs: `best_stage` (the stage chosen), `best_score` (its val `selection_metric`, which
        chose it) and `explanation` (one sentence naming the val figures that decided it).
    """
    import json
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from tlpipe.components.evaluate import core

    inputs = {"frozen": frozen_model, "finetuned": finetuned_model, "scratch": scratch_model}
    model_dirs = {stage: artifact.path for stage, artifact in inputs.items()}
    work = Path(tempfile.mkdtemp(prefix="evaluate-"))
    result = core.evaluate(examples.path, model_dirs, work, selection_metric=selection_metric, top_k=top_k,
                           metadata={stage: dict(a.metadata) for stage, a in inputs.items()},
                           latency_repeats=latency_repeats, tune_dir=tune_result.path if tune_result else None)
    core.log_to_mlflow(result, work, kfp_run_id=kfp_run_id, experiment=experiment)

    scalars = core.flat_metrics(result)
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    best = result["best_stage"]
    matrix = result["candidates"][best]["metrics"]["confusion_matrix"]
    confusion_matrix.log_confusion_matrix(result["classes"], matrix)
    confusion_matrix.metadata["model"] = best
    # The values also as files at the artifacts' URIs: downloadable, and a cached step's outputs must exist.
    Path(metrics.path).write_text(json.dumps(scalars, indent=2))
    Path(confusion_matrix.path).write_text(json.dumps({"model": best, "classes": result["classes"],
                                                       "matrix": matrix}, indent=2))
    # A named .html file, so that the local artifact folder and a download open in a browser (KFP keeps the
    # URI an executor sets: kfp.local, and the v2 launcher, which uploads from it).
    report.path = str(Path(report.path).with_suffix(".html"))
    shutil.copyfile(work / core.REPORT_FILE, report.path)

    core.copy_best(result, model_dirs, best_model.path)
    best_metrics = result["candidates"][best]["metrics"]
    best_model.metadata.update({k: v for k, v in inputs[best].metadata.items()})
    best_model.metadata.update({"stage": best, "test_accuracy": best_metrics["accuracy"],
                                "test_macro_f1": best_metrics["macro_f1"],
                                "selection_metric": selection_metric, "selection_split": "val",
                                "best_score": result["best_score"],
                                "evaluate_mlflow_run_id": result["mlflow_run_id"]})
    outputs = namedtuple("EvaluateOutputs", ["best_stage", "best_score", "explanation"])
    return outputs(best, float(result["best_score"]), result["explanation"])
