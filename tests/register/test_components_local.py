"""The evaluate and register KFP adapters, chained in a pipeline and run by kfp.local (real MLflow + S3)."""
# No `from __future__ import annotations` here: KFP reads the pipeline's return annotation at run time.

import json
import uuid
from html.parser import HTMLParser
from pathlib import Path

CLASSES = ["class_00", "class_01", "class_02"]


def test_evaluate_then_register_through_kfp_local(stack, kfp_local, tmp_path, model_factory, trained,
                                                  session_examples, manifest_dir):
    from kfp import dsl
    from mlflow.tracking import MlflowClient

    from tlpipe.components.evaluate.component import evaluate_op
    from tlpipe.components.register.component import register_op

    model, history = trained
    frozen = model_factory.save_artifact(model_factory.constant_model(model, 2), tmp_path / "frozen", CLASSES,
                                         history)
    finetuned = model_factory.save_artifact(model, tmp_path / "finetuned", CLASSES, history)
    scratch = model_factory.skipped_artifact(tmp_path / "scratch", "scratch", "train_scratch is off")
    name = f"fish-{uuid.uuid4().hex[:8]}"
    evaluate = dsl.component(evaluate_op, install_kfp_package=False)
    register = dsl.component(register_op, install_kfp_package=False)

    def model_input(path, stage):
        return dsl.importer(artifact_uri=str(path), artifact_class=dsl.Model,
                            metadata={"stage": stage, "backbone": "tiny", "image_size": 32,
                                      "mlflow_run_id": f"{stage}-run"}).output

    @dsl.pipeline(name="evaluate-register")
    def pipeline() -> str:
        examples = dsl.importer(artifact_uri=str(session_examples), artifact_class=dsl.Dataset).output
        manifest = dsl.importer(artifact_uri=str(manifest_dir), artifact_class=dsl.Dataset).output
        chosen = evaluate(examples=examples, frozen_model=model_input(frozen, "frozen"),
                          finetuned_model=model_input(finetuned, "finetuned"),
                          scratch_model=model_input(scratch, "scratch"), kfp_run_id=f"kfp-{name}",
                          latency_repeats=3)
        registered = register(best_model=chosen.outputs["best_model"], examples=examples, manifest=manifest,
                              registered_model_name=name, kfp_run_id=f"kfp-{name}")
        return registered.outputs["model_version"]

    assert pipeline().output == "1"

    client = MlflowClient()
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == "1" and champion.tags["stage"] == "finetuned"
    assert champion.tags["mlflow_run_id.finetuned"] == "finetuned-run"
    assert champion.tags["mlflow_run_id.evaluate"]

    output_file = next(p for p in Path(kfp_local).rglob("executor_output.json") if "evaluate-op" in str(p))
    executor_output = json.loads(output_file.read_text())
    artifacts = executor_output["artifacts"]
    cm = artifacts["confusion_matrix"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == CLASSES
    assert [sum(row["row"]) for row in cm["rows"]] == [3, 3, 3]
    assert sum(cm["rows"][i]["row"][i] for i in range(3)) >= 8  # the fine-tuned model's diagonal
    metrics = artifacts["metrics"]["artifacts"][0]["metadata"]
    assert metrics["finetuned_accuracy"] > 0.8 and "scratch_accuracy" not in metrics
    assert executor_output["parameterValues"]["best_stage"] == "finetuned"
    report = Path(artifacts["report"]["artifacts"][0]["uri"]).read_text(encoding="utf-8")
    parser = _ImageSources()
    parser.feed(report)
    assert parser.sources and all(src.startswith("data:image/png;base64,") for src in parser.sources)


class _ImageSources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
