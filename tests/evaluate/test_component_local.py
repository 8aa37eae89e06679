"""The evaluate KFP adapter through kfp.local: the report lands as a named .html file and resolves as an output."""
# No `from __future__ import annotations` here: KFP reads the pipeline's return annotation at run time.

import html
import uuid
from pathlib import Path

CLASSES = ["class_00", "class_01", "class_02"]


def test_report_output_is_an_html_file_in_the_local_artifact_folder(stack, kfp_local, tmp_path, model_factory,
                                                                     trained, session_examples):
    from kfp import dsl
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils
    from tlpipe.components.evaluate.component import evaluate_op
    from tlpipe.components.train import tune
    from tlpipe.components.train.params import TuneParams

    model, history = trained
    frozen = model_factory.save_artifact(model, tmp_path / "frozen", CLASSES, history)
    skipped = {s: model_factory.skipped_artifact(tmp_path / s, s, f"{s} is off") for s in ("finetune", "scratch")}
    evaluate = dsl.component(evaluate_op, install_kfp_package=False)
    run_id = f"kfp-{uuid.uuid4().hex[:8]}"
    tuned = tune.tune(session_examples, tmp_path / "tune", TuneParams(tune="off"), track=False)

    def model_input(path):
        return dsl.importer(artifact_uri=str(path), artifact_class=dsl.Model).output

    @dsl.pipeline(name="evaluate-report")
    def pipeline() -> dsl.HTML:
        examples = dsl.importer(artifact_uri=str(session_examples), artifact_class=dsl.Dataset).output
        chosen = evaluate(examples=examples, frozen_model=model_input(frozen),
                          finetuned_model=model_input(skipped["finetune"]),
                          scratch_model=model_input(skipped["scratch"]), kfp_run_id=run_id, latency_repeats=2,
                          tune_result=dsl.importer(artifact_uri=str(tmp_path / "tune"), artifact_class=dsl.Artifact).output)
        return chosen.outputs["report"]

    report = pipeline().output
    path = Path(report.path)
    assert path.name == "report.html" and path.parent.name == "evaluate-op"
    assert path.is_relative_to(kfp_local) and path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    text = path.read_text(encoding="utf-8")
    assert "frozen was chosen for the highest val accuracy" in text
    assert "Recipe search (tune=off)" in text and html.escape(tuned["line"]) in text
    parent = MlflowClient().get_run(mlflow_utils.parent_run_id(run_id)).data
    assert parent.params["best_stage"] == "frozen" and parent.metrics["val_accuracy"] > 0.8
