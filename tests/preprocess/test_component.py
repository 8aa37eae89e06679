"""The KFP adapter through kfp.local (a subprocess with its own local Spark) and the CLI in-process.

No `from __future__ import annotations` here: kfp reads the pipeline's return annotation at runtime.
"""

import json

from tlpipe.cli.main import main
from tlpipe.components.common import examples


def test_adapter_through_kfp_local(kfp_local, make_manifest):
    from kfp import dsl
    from kfp.dsl import Dataset

    from tlpipe.components.preprocess.component import preprocess_op

    manifest, rows = make_manifest(12, bad=1)
    op = dsl.component(preprocess_op, install_kfp_package=False)

    @dsl.pipeline
    def pipe() -> Dataset:
        imported = dsl.importer(artifact_uri=str(manifest), artifact_class=dsl.Dataset, reimport=False)
        return op(manifest=imported.output, image_size=24, num_shards=0, max_bad_fraction=0.1,
                  spark_master="local[1]", spark_options={"driver_memory": "512m"}).outputs["examples"]

    artifact = pipe().output
    schema = examples.read_schema(artifact.path)
    train = sum(r["split"] == "train" for r in rows[:12])
    assert schema["num_examples"]["train"] == train
    assert artifact.metadata["num_examples"] == schema["num_examples"]
    assert artifact.metadata["bad_images"] == 1 and artifact.metadata["image_size"] == 24
    assert artifact.metadata["num_shards"] == {"train": 1, "val": 1, "test": 1}


def test_cli(spark, make_manifest, tmp_path, capsys):
    manifest, _ = make_manifest(6)
    assert main(["preprocess", "--manifest", str(manifest), "--out", str(tmp_path / "ex"), "--image-size", "16",
                 "--resize-mode", "pad"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["num_examples"] == examples.read_schema(tmp_path / "ex")["num_examples"]
    assert printed["bad_images"] == 0
