"""End to end: `tlpipe local` compiles the pipeline and runs that YAML (the file a user uploads) with kfp.local,
every step against the real embedded stack, and registers a champion; then what a user looks at is checked (the
report's curves, the version's links, the served answer, the MLflow runs); an identical second run is served
from the step cache and adds no model version; a third with run_finetune=false trains nothing new and shows
the fine-tuned stage as skipped."""

from __future__ import annotations

import html
import os
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from tlpipe.cli.main import main
from tlpipe.components.common import model_artifact, tune_result
from tlpipe.components.common.synthetic import write_dataset
from tlpipe.components.evaluate import report

MODEL = "e2e-fish"
TRAINING_STAGES = ("train_frozen", "finetune", "train_scratch")


def _training_runs(experiment: str) -> int:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return sum(r.data.tags.get("stage") in TRAINING_STAGES for r in runs)


def test_local_pipeline_registers_a_champion_then_reuses_the_cache(stack, tmp_path, capsys):
    data = write_dataset(tmp_path / "shapes", num_classes=3, per_class=14, size=48, image_format="PNG")
    assert len(data) == 42
    argv = ["local", "--data", str(tmp_path / "shapes"), "--pipeline-root", str(tmp_path / "root"),
            "-p", "num_classes=3", "-p", "image_size=32", "-p", "batch_size=8", "-p", "epochs=1",
            "-p", "finetune_epochs=1", "-p", "unfreeze_layers=5", "-p", "alpha=0.35", "-p", "weights=none",
            "-p", "dedupe=exact", "-p", f"registered_model_name={MODEL}", "-p", "experiment=e2e",
            "-p", "tune_trials=2", "-p", 'tune_space={"feature_cache": "on"}']

    assert main(argv) == 0
    out = capsys.readouterr().out
    for stage in ("frozen", "finetuned", "scratch"):
        assert any(line.startswith(stage) for line in out.splitlines()), out
    run = sorted((tmp_path / "root").glob("transfer-learning-image-classifier-*"))[-1]
    best = tune_result.read(run / "tune-op" / "tune_result")  # the search ran, and the frozen stage trained with it
    assert best["tune"] == "frozen" and best["line"] in out.splitlines(), out
    assert best["trials"]["complete"] + best["trials"]["pruned"] == 2
    assert len(model_artifact.read_history(run / "train-frozen-op" / "model")["epochs"]) <= best["train_params"]["epochs"]
    assert html.escape(best["line"]) in (run / "evaluate-op" / "report.html").read_text()
    assert f"models:/{MODEL}/1 (alias @champion)" in out, out
    client = MlflowClient()
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    trained = _training_runs("e2e")
    assert trained == 3
    _check_what_the_user_sees(client, tmp_path / "root", data, os.environ["KFP_RUN_ID"])

    assert (tmp_path / "root" / "pipeline.yaml").is_file()  # what ran: the compiled pipeline

    assert main(argv) == 0  # same data, same parameters
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert _training_runs("e2e") == trained, "the second run trained again instead of using the step cache"
    capsys.readouterr()

    # a stage switched off is a task that writes its placeholder: evaluate still gets three models, lists it skipped
    assert main([*argv, "-p", "run_finetune=false"]) == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["finetuned", "(skipped)"] for line in out.splitlines()), out
    assert _training_runs("e2e") == trained, "frozen and scratch come from the cache; the skipped stage trains nothing"
    run = sorted((tmp_path / "root").glob("transfer-learning-image-classifier-*"))[-1]
    assert model_artifact.read_skipped(run / "finetune-op" / "model") == {"stage": "finetune",
                                                                         "reason": "run_finetune=False"}
    assert "skipped: run_finetune=False" in (run / "evaluate-op" / "report.html").read_text()


def _check_what_the_user_sees(client, root: Path, images: list[Path], kfp_run_id: str) -> None:
    # the report's curves: one point per epoch that each stage recorded in its history.json
    runs = sorted(root.glob("transfer-learning-image-classifier-*"))
    histories = {stage: model_artifact.read_history(runs[-1] / f"{step}-op" / "model")
                 for stage, step in (("frozen", "train-frozen"), ("finetuned", "finetune"),
                                     ("scratch", "train-scratch"))}
    figure = report.curves_figure(report.training_series(histories))
    lines = [(ax.get_title(), line.get_ydata().tolist()) for ax in figure.axes for line in ax.get_lines()]
    for stage, history in histories.items():
        rows = history["epochs"]
        assert rows, stage
        plotted = [y for title, y in lines if title == f"{stage}: accuracy"]
        assert plotted == [[r["train_accuracy"] for r in rows], [r["val_accuracy"] for r in rows]], stage
    assert (runs[-1] / "evaluate-op" / "report.html").is_file()

    # the version links back to this pipeline run and to a LoggedModel of the training run
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["kfp_run_id"] == kfp_run_id
    model_id = version.tags["model_id"]
    assert version.source == f"models:/{model_id}"
    logged = client.get_logged_model(model_id)
    assert client.get_run(logged.source_run_id).data.tags["stage"] in TRAINING_STAGES

    # the served champion answers with a class of the data set
    answer = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(
        pd.DataFrame({"image": [images[0].read_bytes()]}))
    classes = sorted({p.parent.name for p in images})
    assert answer["label"].iloc[0] in classes
    assert {entry["label"] for entry in answer["top_k"].iloc[0]} <= set(classes)

    # the parent run carries the parameters and the result; nothing is left RUNNING
    exp = client.get_experiment_by_name("e2e")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.kfp_run_id = '{kfp_run_id}' and "
                                                        "tags.`tlpipe.role` = 'pipeline'")
    assert parent.data.params["image_size"] == "32" and parent.data.params["finetune_epochs"] == "1"
    assert parent.data.params["epochs"] == "1" and parent.data.params["tune"] == "frozen"
    assert "tune.epochs" in parent.data.params
    assert parent.data.params["best_stage"] in ("frozen", "finetuned", "scratch")
    assert "test_accuracy" in parent.data.metrics and "val_accuracy" in parent.data.metrics
    assert [i.dataset.name for i in parent.inputs.dataset_inputs] == ["manifest"]
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert not running, [r.info.run_name for r in running]
