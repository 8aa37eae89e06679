"""CONTRACT TESTS of `tlpipe upload` / `tlpipe run` against a local server speaking the KFP v2beta1 REST API.

No KFP API server runs here; the `kfp_server` fixture (conftest.py) answers the endpoints the kfp client calls with the
kfp-server-api models and validates specs against the pipeline-spec protos. A real cluster is not exercised.
"""

from __future__ import annotations

import pytest
import yaml

from tlpipe.cli.main import main
from tlpipe.cli.remote import ParameterError, parse_params
from tlpipe.pipelines.compiler import compile_pipeline
from tlpipe.pipelines.pipeline import PIPELINE_NAME


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("remote") / "pipeline.yaml")


def test_upload_creates_then_adds_a_version_carrying_the_compiled_spec(kfp_server, package, capsys):
    assert main(["upload", str(package), "--host", kfp_server.url]) == 0
    assert main(["upload", str(package), "--host", kfp_server.url, "--version", "v2"]) == 0
    (pipeline,) = kfp_server.pipelines.values()
    assert pipeline.display_name == PIPELINE_NAME
    versions = kfp_server.versions[pipeline.pipeline_id]
    assert [v.display_name for v in versions] == [PIPELINE_NAME, "v2"]
    compiled = next(yaml.safe_load_all(package.read_text()))
    assert versions[-1].pipeline_spec == compiled
    assert f"#/pipelines/details/{pipeline.pipeline_id}" in capsys.readouterr().out


def test_run_submits_spec_and_parameters_and_prints_the_dashboard_url(kfp_server, package, capsys):
    code = main(["run", "--host", kfp_server.url, "--experiment", "fish-exp", "--package", str(package),
                 "-p", "epochs=3", "-p", "weights=s3://tlpipe/weights/mnv2.keras", "-p", "run_finetune=false",
                 "--token", "t0ken"])
    assert code == 0
    (run,) = kfp_server.runs.values()
    assert run.runtime_config.parameters == {"epochs": 3, "weights": "s3://tlpipe/weights/mnv2.keras",
                                             "run_finetune": False}
    assert run.pipeline_spec["pipeline_spec"] == next(yaml.safe_load_all(package.read_text()))
    assert "kubernetes" in run.pipeline_spec["platform_spec"]["platforms"]
    (experiment,) = kfp_server.experiments.values()
    assert experiment.display_name == "fish-exp" and run.experiment_id == experiment.experiment_id
    assert f"{kfp_server.url}/#/runs/details/{run.run_id}" in capsys.readouterr().out
    run_posts = [h for m, p, h in kfp_server.requests if m == "POST" and p.endswith("/runs")]
    assert {k.lower(): v for k, v in run_posts[0].items()}["authorization"] == "Bearer t0ken"


def test_no_cache_switches_caching_off_for_every_step(kfp_server, package):
    assert main(["run", "--host", kfp_server.url, "--package", str(package), "--no-cache"]) == 0
    (run,) = kfp_server.runs.values()
    tasks = run.pipeline_spec["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks and all(t.get("cachingOptions", {}).get("enableCache") is not True for t in tasks.values())


def test_run_of_an_uploaded_pipeline_uses_its_latest_version(kfp_server, package):
    main(["upload", str(package), "--host", kfp_server.url])
    main(["upload", str(package), "--host", kfp_server.url, "--version", "v2"])
    assert main(["run", "--host", kfp_server.url, "--pipeline-name", PIPELINE_NAME, "--package", str(package)]) == 0
    (run,) = kfp_server.runs.values()
    latest = kfp_server.versions[run.pipeline_version_reference.pipeline_id][-1]
    assert run.pipeline_version_reference.pipeline_version_id == latest.pipeline_version_id


def test_parameters_are_checked_against_the_pipeline():
    known = {"epochs": 10, "backbone": "MobileNetV2", "spark_options": {}}
    assert parse_params(["epochs=2", 'spark_options={"a": 1}', "backbone=ResNet50"], known) == {
        "epochs": 2, "spark_options": {"a": 1}, "backbone": "ResNet50"}
    with pytest.raises(ParameterError, match="unknown pipeline parameter 'epoch'.*epochs"):
        parse_params(["epoch=2"], known)
    with pytest.raises(ParameterError, match="not key=value"):
        parse_params(["epochs"], known)
