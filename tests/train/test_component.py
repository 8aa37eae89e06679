"""The KFP adapters run through kfp.local (frozen -> finetune), logging to the real embedded MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


def test_adapters_in_a_local_pipeline_log_nested_mlflow_runs(stack, kfp_local, synthetic_examples, tiny_backbone):
    from kfp import dsl

    from tlpipe.components.train.component import finetune_op, train_frozen_op

    frozen_component = dsl.component(train_frozen_op, install_kfp_package=False)
    finetune_component = dsl.component(finetune_op, install_kfp_package=False)

    @dsl.pipeline(name="train-stages")
    def pipeline():
        examples = dsl.importer(artifact_uri=str(synthetic_examples), artifact_class=dsl.Dataset)
        frozen = frozen_component(examples=examples.output, weights=str(tiny_backbone), batch_size=8, epochs=3,
                                  augment=False, feature_cache="on", kfp_run_id="kfp-local-1",
                                  dense_units=[32, 16], learning_rate=3e-3)
        finetune_component(examples=examples.output, frozen_model=frozen.outputs["model"], batch_size=8,
                           finetune_epochs=2, unfreeze_layers=2, kfp_run_id="kfp-local-1")

    pipeline()

    # artifacts and their metadata as KFP recorded them
    models, returned = {}, {}
    for executor_output in Path(kfp_local).rglob("executor_output.json"):
        doc = json.loads(executor_output.read_text())
        for artifact in doc.get("artifacts", {}).get("model", {}).get("artifacts", []):
            models[artifact["metadata"]["stage"]] = artifact
            returned[artifact["metadata"]["stage"]] = doc["parameterValues"]["Output"]
    assert set(models) == {"train_frozen", "finetune"}
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
    assert set(runs) == {"train_frozen", "finetune"}
    # each stage put the pipeline parameters it owns on the parent run, under the pipeline's names
    on_parent = parent[0].data.params
    assert {k: on_parent[k] for k in ("batch_size", "epochs", "learning_rate", "feature_cache", "weights",
                                      "finetune_epochs", "unfreeze_layers", "finetune_learning_rate")} == {
        "batch_size": "8", "epochs": "3", "learning_rate": "0.003", "feature_cache": "on",
        "weights": str(tiny_backbone), "finetune_epochs": "2", "unfreeze_layers": "2",
        "finetune_learning_rate": "1e-05"}
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
        epochs = 3 if stage == "train_frozen" else 2
        for key in ("train_accuracy", "val_accuracy", "train_loss", "val_loss"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(epochs))
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
            "class_indices.json", "history.json", "curves.png"}
        contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                    for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
        assert contexts == {"examples-train": "training", "examples-val": "validation"}
        info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
        assert info.signature is not None and info.saved_input_example_info is not None
    assert runs["finetune"].data.params["unfreeze_layers"] == "2"
    assert runs["finetune"].data.params["finetune_learning_rate"] == "1e-05"
    assert runs["train_frozen"].data.params["pretrained_weights"] == str(tiny_backbone)

    # the logged model serves through pyfunc on raw 0-255 pixels
    model = mlflow.pyfunc.load_model(f"runs:/{runs['train_frozen'].info.run_id}/model")
    import numpy as np

    probs = np.asarray(model.predict(np.full((2, 32, 32, 3), 128.0, dtype="float32")))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
