"""What a user finds in MLflow (the real server of the test stack) after a standalone stage and a pipeline run.

Standalone (no --kfp-run-id, no $KFP_RUN_ID): one top-level run, FINISHED, no parent. In a pipeline run:
ingest -> preprocess -> train_frozen under one KFP run id put their parameters and the manifest data set on the
parent run; the stage's run has the train/val examples as data sets.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tlpipe.cli.main import main
from tlpipe.components.common import examples, s3
from tlpipe.components.common.synthetic import write_dataset


def split_sha256(examples_dir: Path, split: str) -> str:
    """The documented recipe: sha256 over '<shard name> <shard sha256>\\n' of the split's shards, in order."""
    lines = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                    for p in sorted(Path(examples_dir, split).glob("part-*.tfrecord")))
    return hashlib.sha256(lines.encode()).hexdigest()


def inputs_of(run) -> dict[str, dict]:
    """{dataset name: {digest, source, profile, tags}} of a run's data set inputs."""
    return {i.dataset.name: {"digest": i.dataset.digest, "source": json.loads(i.dataset.source),
                             "profile": i.dataset.profile, "tags": {t.key: t.value for t in i.tags}}
            for i in run.inputs.dataset_inputs}


def test_standalone_stage_leaves_no_run_running(stack, synthetic_examples, tiny_backbone, tmp_path, monkeypatch,
                                                capsys):
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    experiment = f"standalone-{uuid.uuid4().hex[:8]}"
    assert main(["train", "frozen", "--examples", str(synthetic_examples), "--out", str(tmp_path / "model"),
                 "--weights", str(tiny_backbone), "--epochs", "2", "--batch-size", "8", "--no-augment",
                 "--dense-units", "16", "--dropouts", "0.1", "--experiment", experiment]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):])  # after the progress bar that saving the model's example prints

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(printed["mlflow_run_id"], "FINISHED")]
    assert "mlflow.parentRunId" not in runs[0].data.tags and "kfp_run_id" not in runs[0].data.tags
    found = inputs_of(client.get_run(printed["mlflow_run_id"]))
    for split, context in (("train", "training"), ("val", "validation")):
        sha = split_sha256(synthetic_examples, split)
        assert found[f"examples-{split}"]["digest"] == sha[:32]
        assert found[f"examples-{split}"]["tags"] == {
            "mlflow.data.context": context, "sha256": sha,
            "num_examples": str(examples.read_schema(synthetic_examples)["num_examples"][split])}
        assert found[f"examples-{split}"]["source"] == {"uri": str((synthetic_examples / split).resolve())}


def test_pipeline_parent_carries_the_step_params_and_the_data_sets(stack, s3_client, bucket, tiny_backbone,
                                                                 tmp_path, monkeypatch):
    from tlpipe.components.ingest.core import ingest
    from tlpipe.components.preprocess.core import preprocess
    from tlpipe.components.train import core, tune
    from tlpipe.components.train.params import TrainParams, TuneParams

    kfp_run_id = f"run-{uuid.uuid4().hex[:8]}"
    experiment = f"pipeline-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KFP_RUN_ID", kfp_run_id)
    data = f"s3://{bucket}/ds"
    s3.upload_dir(s3_client, write_dataset(tmp_path / "data", num_classes=3, per_class=10, size=40)[0].parents[1],
                  data)
    result = ingest(data, tmp_path / "manifest", dedupe="exact", expected_num_classes=3, max_workers=4,
                    experiment=experiment, manifest_uri=f"s3://{bucket}/artifacts/manifest")
    preprocess(str(tmp_path / "manifest"), str(tmp_path / "examples"), image_size=32, resize_mode="pad",
               spark_master="local[1]", spark_options={"driver_memory": "512m",
                                                       "conf": {"spark.hadoop.fs.s3a.secret.key": "hush"}},
               experiment=experiment)
    params = TrainParams(batch_size=8, epochs=2, learning_rate=3e-3, augment=False, early_stopping_patience=0,
                         weights=str(tiny_backbone), dense_units=(16,), dropouts=(0.1,))
    best = tune.tune(tmp_path / "examples", tmp_path / "tune", TuneParams(
        tune_trials=3, tune_max_epochs=3, tune_space='{"feature_cache": "on"}'), params,
        manifest_dir=tmp_path / "manifest", experiment=experiment)
    chosen = best["train_params"]
    stage = core.train_frozen(tmp_path / "examples", tmp_path / "model", params.tuned(chosen), experiment=experiment,
                              examples_uri=f"s3://{bucket}/artifacts/examples")

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], f"tags.kfp_run_id = '{kfp_run_id}' and "
                                                      "tags.`tlpipe.role` = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params == {
        # ingest, under the pipeline's names, and its own settings as ingest.*
        "data_uri": data, "num_classes": "3", "group_pattern": "", "dedupe": "exact",
        "near_duplicate_method": "dct", "near_duplicate_similarity": "0.95", "allow_similar_class_names": "False",
        "ingest.train_ratio": "0.7", "ingest.val_ratio": "0.15", "ingest.test_ratio": "0.15",
        "ingest.near_duplicate_distance": "4", "ingest.min_images_per_class": "1",
        "ingest.allow_small_classes": "False", "ingest.max_image_pixels": "89478485",
        "ingest.max_bad_fraction": "0.05", "ingest.max_object_bytes": str(256 * 2**20),
        # preprocess (a secret-looking Spark setting is masked)
        "image_size": "32", "resize_mode": "pad", "spark_backend": "local",
        "spark_options": '{"conf": {"spark.hadoop.fs.s3a.secret.key": "***"}, "driver_memory": "512m"}',
        "preprocess.num_shards": "0", "preprocess.max_bad_fraction": "0.05", "preprocess.jpeg_quality": "95",
        # the frozen stage
        "batch_size": "8", "seed": "42", "early_stopping_patience": "0", "early_stopping_monitor": "val_loss",
        "use_class_weights": "False", "backbone": "MobileNetV2", "alpha": "1.0", "weights": str(tiny_backbone),
        # the tune step: the pipeline's values of what it may choose for the frozen stage, and its choice
        "epochs": "2", "learning_rate": "0.003", "augment": "False", "feature_cache": "off",
        "train.dense_units": "[16]", "train.dropouts": "[0.1]", "weight_decay": "0.0", "label_smoothing": "0.0",
        "tune": "frozen", "tune_trials": "3", "tune_timeout_s": "90.0", "tune_space": '{"feature_cache": "on"}',
        **{f"tune.{k}": str(v) for k, v in chosen.items()},
    }
    trials = client.search_runs([exp.experiment_id], "tags.stage = 'tune_trial'", run_view_type=ViewType.ALL)
    assert len(trials) == 3 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert {t.info.status for t in trials} <= {"FINISHED", "KILLED"}  # KILLED: pruned
    assert {t.data.tags["kfp_run_id"] for t in trials} == {kfp_run_id}
    tune_run = client.search_runs([exp.experiment_id], "tags.stage = 'tune'")[0]
    assert tune_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert tune_run.data.metrics["cv_accuracy"] == best["cv_accuracy"]
    assert {a.path for a in client.list_artifacts(tune_run.info.run_id)} == set(best["plots"])
    manifest = inputs_of(parent)["manifest"]
    assert manifest["digest"] == result.manifest_sha256[:32]
    assert manifest["tags"] == {"mlflow.data.context": "ingest", "sha256": result.manifest_sha256}
    assert manifest["source"] == {"uri": f"s3://{bucket}/artifacts/manifest"}
    assert json.loads(manifest["profile"])["num_rows"] == result.num_images == 30
    assert parent.info.status == "RUNNING"  # register, the last step, closes it

    run = client.get_run(stage.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
    found = inputs_of(run)
    assert set(found) == {"examples-train", "examples-val"}
    for split in ("train", "val"):
        assert found[f"examples-{split}"]["digest"] == split_sha256(tmp_path / "examples", split)[:32]
        assert found[f"examples-{split}"]["source"] == {"uri": f"s3://{bucket}/artifacts/examples/{split}"}


def test_the_stages_of_one_pipeline_never_disagree_on_a_parent_param():
    """Each stage logs what it owns; the values the stages share are equal (MLflow params are write-once)."""
    from dataclasses import replace

    from tlpipe.components.train.params import TrainParams
    from tlpipe.components.train.tracking import parent_params, tuned_params

    pipeline = TrainParams(feature_cache="on", weights="imagenet")  # one set of pipeline parameters
    tuned = replace(pipeline, learning_rate=0.02, dense_units=(), dropouts=(), feature_cache="flips", augment=False)
    logged = {"tune": tuned_params(pipeline),  # the tune step logs the pipeline's values (its choice as tune.*)
              "train_frozen": parent_params("train_frozen", tuned),  # what core passes each stage
              "train_scratch": parent_params("train_scratch", replace(pipeline, weights=None, feature_cache="off")),
              "finetune": parent_params("finetune", replace(pipeline, feature_cache="off"))}
    merged = {}
    for params in logged.values():
        for key, value in params.items():
            assert merged.setdefault(key, value) == value, key
    assert logged["train_frozen"]["weights"] == "imagenet" and logged["tune"]["feature_cache"] == "on"
    assert "weights" not in logged["train_scratch"] and "epochs" not in logged["finetune"]
    assert logged["finetune"]["finetune_learning_rate"] == 1e-5
