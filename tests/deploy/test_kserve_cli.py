"""`tlpipe models promote/rollback --kserve` against the real embedded MLflow registry and the fake Kubernetes
API of test_kserve.py: the service moves first and the alias after it, so a failure on either side leaves the
registry and the service agreeing."""

from __future__ import annotations

import uuid

import pytest

from tests.deploy.test_kserve import BAD_URI, kube  # noqa: F401  (kube: the fixture)
from tlpipe.cli.main import main
from tlpipe.components.common import kube as kube_client
from tlpipe.components.deploy import core
from tlpipe.components.deploy import inference_service as isvc
from tlpipe.components.deploy.params import DeployParams

SERVICE = "tlpipe/fish-classifier"


def source(version: int) -> str:
    return BAD_URI if version == 3 else f"s3://mlflow/models/fish/v{version}"


@pytest.fixture
def deployed(stack, kube, monkeypatch):  # noqa: F811
    """(client, name, fake server): versions 1-3 (v3's predictor crash-loops), champion v1 served."""
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils
    from tlpipe.components.register import registry

    mlflow_utils.connect()
    client = MlflowClient()
    name = f"fish-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for v in (1, 2, 3):
        client.create_model_version(name, source=source(v), await_creation_for=0)
    registry.promote(client, name, "1")
    server, api_client = kube()
    monkeypatch.setattr(kube_client, "api_client", lambda: api_client)
    monkeypatch.setattr(core, "POLL_INTERVAL_S", 0.01)
    core.deploy(name, DeployParams(deploy="kserve", ready_timeout_s=5), api_client, client, poll_interval_s=0.01)
    return client, name, server


def served(server) -> tuple[str, str]:
    obj = server.objects[tuple(SERVICE.split("/"))]
    return isvc.served(obj)[0], obj["spec"]["predictor"]["model"]["storageUri"]


def champion(client, name) -> str:
    return client.get_model_version_by_alias(name, "champion").version


def test_promote_and_rollback_move_the_service_with_the_alias(deployed, capsys):
    client, name, server = deployed
    assert served(server) == ("1", source(1))
    assert main(["models", "promote", name, "2", "--kserve", SERVICE, "--ready-timeout-s", "5"]) == 0
    assert champion(client, name) == "2" and served(server) == ("2", source(2))
    assert f"champion v1 -> v2; {SERVICE} serves v2" in capsys.readouterr().out
    assert main(["models", "rollback", name, "--kserve", SERVICE, "--ready-timeout-s", "5"]) == 0
    assert champion(client, name) == "1" and served(server) == ("1", source(1))


def test_a_predictor_that_fails_leaves_both_on_the_old_champion(deployed, capsys):
    client, name, server = deployed
    assert main(["models", "promote", name, "3", "--kserve", SERVICE, "--ready-timeout-s", "5"]) == 2
    err = capsys.readouterr().err
    assert "tlpipe: error: InferenceService tlpipe/fish-classifier: the predictor failed: pod " in err
    assert "CrashLoopBackOff" in err
    assert champion(client, name) == "1" and served(server) == ("1", source(1))


def test_an_alias_that_cannot_move_puts_the_service_back(deployed, monkeypatch, capsys):
    from tlpipe.components.register import registry

    client, name, server = deployed

    def refuse(*args, **kwargs):
        raise registry.RegistryPermissionError("MLflow refused to set alias 'champion'")

    monkeypatch.setattr(registry, "move_champion", refuse)
    assert main(["models", "promote", name, "2", "--kserve", SERVICE, "--ready-timeout-s", "5"]) == 1
    assert "refused to set alias 'champion'" in capsys.readouterr().err
    assert champion(client, name) == "1" and served(server) == ("1", source(1))
    assert [isvc.served(b)[0] for m, _, b in server.requests if m == "PATCH"] == ["2", "1"]
