"""End to end: `tlpipe local` runs all seven steps against the real embedded stack and registers a champion;
an identical second run is served from the step cache and adds no model version."""

from __future__ import annotations

from mlflow import MlflowClient

from tlpipe.cli.main import main
from tlpipe.components.common.synthetic import write_dataset

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
            "-p", "dedupe=exact", "-p", f"registered_model_name={MODEL}", "-p", "experiment=e2e"]

    assert main(argv) == 0
    out = capsys.readouterr().out
    for stage in ("frozen", "finetuned", "scratch"):
        assert any(line.startswith(stage) for line in out.splitlines()), out
    assert f"models:/{MODEL}/1 (alias @champion)" in out, out
    client = MlflowClient()
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    trained = _training_runs("e2e")
    assert trained == 3

    assert main(argv) == 0  # same data, same parameters
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert _training_runs("e2e") == trained, "the second run trained again instead of using the step cache"
