"""The KFP adapters run through kfp.local (tune=all -> frozen -> finetune), logging to the real embedded MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


def test_adapters_in_a_local_pipeline_log_nested_mlflow_runs(stack, kfp_local, synthetic_examples,
                                                               synthetic_manifest, tiny_backbone):
    from kfp import dsl

    from tlpipe.components.common import tune_result
    from tlpipe.components.train.component import finetune_op, train_frozen_op, tune_op

    tune_component = dsl.component(tune_op, install_kfp_package=False)
    frozen_component = dsl.component(train_frozen_op, install_kfp_package=False)
    finetune_component = dsl.component(finetune_op, install_kfp_package=False)

    @dsl.pipeline(name="train-stages")
    def pipeline():
        examples = dsl.importer(artifact_uri=str(synthetic_examples), artifact_class=dsl.Dataset)
        manifest = dsl.importer(artifact_uri=str(synthetic_manifest), artifact_class=dsl.Dataset)
        searched = tune_component(examples=examples.output, manifest=manifest.output, weights=str(tiny_backbone),
                                  batch_size=8, epochs=3, learning_rate=3e-3, augment=False, feature_cache="on",
                                  dense_units=[32, 16], tune_trials=3, tune_space='{"feature_cache": "on"}',
                                  tune="all", tune_finetune_trials=2, finetune_epochs=2, unfreeze_layers=2,
                                  kfp_run_id="kfp-local-1")
        frozen = frozen_component(examples=examples.output, tune_result=searched.outputs["tune_result"],
                                  weights=str(tiny_backbone), batch_size=8, early_stopping_patience=0,
                                  kfp_run_id="kfp-local-1")
        finetune_component(examples=examples.output, frozen_model=frozen.outputs["model"],
                           tune_result=searched.outputs["tune_result"], batch_size=8, finetune_epochs=2,
                           unfreeze_layers=2, kfp_run_id="kfp-local-1")

    pipeline()

    # artifacts and their metadata as KFP recorded them
    models, returned, searches = {}, {}, []
    for executor_output in Path(kfp_local).rglob("executor_output.json"):
        doc = json.loads(executor_output.read_text())
        for artifact in doc.get("artifacts", {}).get("model", {}).get("artifacts", []):
            models[artifact["metadata"]["stage"]] = artifact
            returned[artifact["metadata"]["stage"]] = doc["parameterValues"]["Output"]
        searches += [(a, doc["parameterValues"]["Output"])
                     for a in doc.get("artifacts", {}).get("tune_result", {}).get("artifacts", [])]
    assert set(models) == {"train_frozen", "finetune"}
    # the tune step's choice is what the frozen stage trained with
    ((search, line),) = searches
    best = tune_result.read(search["uri"])
    chosen = best["train_params"]
    finetuned = best["finetune_params"]
    assert best["tune"] == "all" and line == best["line"] and f"{best['cv_accuracy']:.3f}" in line
    assert search["metadata"]["trials_complete"] + search["metadata"]["trials_pruned"] == 3
    assert chosen["feature_cache"] == "on" and chosen["augment"] is False
    frozen_history = json.loads((Path(models["train_frozen"]["uri"]) / "history.json").read_text())
    assert len(frozen_history["epochs"]) == chosen["epochs"]
    for artifact in models.values():
        meta = artifact["metadata"]
        assert meta["backbone"] == "MobileNetV2" and meta["image_size"] == 32, meta
        folder = Path(artifact["uri"])
        assert {p.name for p in folder.iterdir()} >= {"model.keras", "class_indices.json", "history.json",
                                                      "curves.png"}

    client = MlflowClient()
    exp = client.get_experiment_by_name("fish-classification")
    parent = client.search_runs([exp.experiment_id], "tags.kfp_run_id = 'kfp-local-1' and tags.`tlpipe.role` = 'pipeline'")
    assert len(parent) == 1
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    runs = {r.data.tags["stage"]: r for r in children}
    assert set(runs) == {"train_frozen", "finetune", "tune", "tune_trial", "tune_finetune_trial"}
    trials = [r for r in children if r.data.tags["stage"] == "tune_trial"]
    assert len(trials) == 3 and runs["tune"].data.metrics["cv_accuracy"] == best["cv_accuracy"]
    assert len([r for r in children if r.data.tags["stage"] == "tune_finetune_trial"]) == 2
    assert runs["tune"].data.metrics["finetune_val_accuracy"] == best["finetune"]["val_accuracy"]
    # each step put the pipeline parameters it owns on the parent run, under the pipeline's names (the tune step
    # the given values of what it may choose, and its choice as tune.<name>)
    on_parent = parent[0].data.params
    assert {k: on_parent[k] for k in ("batch_size", "epochs", "learning_rate", "feature_cache", "weights",
                                      "finetune_epochs", "unfreeze_layers", "finetune_learning_rate", "tune",
                                      "tune_trials", "tune.epochs", "tune.learning_rate", "tune.unfreeze_layers")} == {
        "batch_size": "8", "epochs": "3", "learning_rate": "0.003", "feature_cache": "on",
        "weights": str(tiny_backbone), "finetune_epochs": "2", "unfreeze_layers": "2",
        "finetune_learning_rate": "1e-05", "tune": "all", "tune_trials": "3",
        "tune.epochs": str(chosen["epochs"]), "tune.learning_rate": str(chosen["learning_rate"]),
        "tune.unfreeze_layers": str(finetuned["unfreeze_layers"])}
    assert runs["train_frozen"].data.params["learning_rate"] == str(chosen["learning_rate"])
    runs = {stage: runs[stage] for stage in ("train_frozen", "finetune")}
    for stage, run in runs.items():
        assert run.data.metrics["final_val_accuracy"] == returned[stage] == models[stage]["metadata"]["val_accuracy"]
        assert run.info.run_id == models[stage]["metadata"]["mlflow_run_id"]
        params = run.data.params
        for key in ("base_model", "pretrained_weights", "num_classes", "image_size", "batch_size", "epochs",
                    "learning_rate"):
            assert key in params, (stage, key)
        assert params["num_classes"] == "3" and params["image_size"] == "32"
        for key in ("final_train_accuracy", "final_val_accuracy", "top_k_categorical_accuracy"):
            assert 0.0 <= run.data.metrics[key] <= 1.0
        epochs = chosen["epochs"] if stage == "train_frozen" else finetuned["finetune_epochs"]
        for key in ("train_accuracy", "val_accuracy", "train_loss", "val_loss"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(epochs))
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
            "class_indices.json", "history.json", "curves.png"}
        contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                    for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
        assert contexts == {"examples-train": "training", "examples-val": "validation"}
        info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
        assert info.signature is not None and info.saved_input_example_info is not None
    # the fine-tuning stage trained with the tune step's choice, not with the given 2 layers at 1e-5
    assert runs["finetune"].data.params["unfreeze_layers"] == str(finetuned["unfreeze_layers"])
    assert runs["finetune"].data.params["finetune_learning_rate"] == str(finetuned["finetune_learning_rate"])
    assert runs["train_frozen"].data.params["pretrained_weights"] == str(tiny_backbone)

    # the logged model serves through pyfunc on raw 0-255 pixels
    model = mlflow.pyfunc.load_model(f"runs:/{runs['train_frozen'].info.run_id}/model")
    import numpy as np

    probs = np.asarray(model.predict(np.full((2, 32, 32, 3), 128.0, dtype="float32")))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
