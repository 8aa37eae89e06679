"""A registered version made by the real producers from the demo photos (examples/fish-egu2017-demo):
ingest -> preprocess (Spark local[2]) -> train_scratch -> evaluate -> register, at 32 px so it stays fast."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "fish-egu2017-demo" / "images"


@pytest.fixture(scope="session")
def demo_model(stack, s3_client, tmp_path_factory):
    """(models:/ reference of the champion, best_model folder, manifest folder) of one real chain."""
    from tlpipe.components.evaluate import core as evaluate
    from tlpipe.components.ingest.core import ingest
    from tlpipe.components.ingest.upload import upload_folder
    from tlpipe.components.preprocess.core import preprocess
    from tlpipe.components.register import core as register
    from tlpipe.components.train import core as train
    from tlpipe.components.train.params import TrainParams

    tmp = tmp_path_factory.mktemp("demo-model")
    bucket, name = f"t-{uuid.uuid4().hex[:12]}", f"fish-{uuid.uuid4().hex[:8]}"
    s3_client.make_bucket(bucket)
    upload_folder(DEMO, f"s3://{bucket}/demo")
    ingest(f"s3://{bucket}/demo", tmp / "manifest", group_pattern=r"(\d{8}_\d{6})_")
    preprocess(str(tmp / "manifest"), str(tmp / "examples"), image_size=32, spark_master="local[2]")
    train.train_scratch(tmp / "examples", tmp / "scratch", TrainParams(
        batch_size=32, epochs=4, learning_rate=3e-3, augment=False, early_stopping_patience=0,
        dense_units=(32,), dropouts=(0.1,)))
    result = evaluate.evaluate(tmp / "examples", {"scratch": tmp / "scratch"}, tmp / "eval", latency_repeats=2)
    best = evaluate.copy_best(result, {"scratch": tmp / "scratch"}, tmp / "best")
    registered = register.register(best, tmp / "examples", tmp / "manifest", registered_model_name=name,
                                   tflite_latency_repeats=2)
    assert registered.promoted
    return f"models:/{name}@champion", best, tmp / "manifest"
