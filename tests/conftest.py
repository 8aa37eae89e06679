"""Shared fixtures: one real embedded stack (SeaweedFS S3 + MLflow) per test session, fresh buckets, ../shared."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.settings import ALL_ENV_VARS
from tlpipe.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
# Subprocesses (kfp.local steps, spark-submit, the CLI) import this checkout, not another install of it.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A real S3 + MLflow stack on free 127.0.0.1 ports, its connection variables in os.environ."""
    saved = {k: os.environ.get(k) for k in (*ALL_ENV_VARS, "TLPIPE_DATA_BUCKET")}
    stack = Stack(tmp_path_factory.mktemp("stack"))
    stack.up()
    stack.apply_env(override=True)
    yield stack
    stack.down(grace=5)  # disposable data: no need to wait for SeaweedFS' slow graceful stop
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def s3_client(stack):
    return s3lib.client()


@pytest.fixture
def bucket(s3_client):
    """A new empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_client.make_bucket(name)
    return name


@pytest.fixture
def kfp_local(tmp_path):
    """kfp.local with the subprocess runner in this interpreter (no Docker); returns the pipeline root."""
    from kfp import local

    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder beside the repository (data, weights); skips the test when absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared not found at {SHARED_DIR}: the real fish photos and weights live there")
    return SHARED_DIR


@pytest.fixture
def synthetic_examples(tmp_path) -> Path:
    """A small `examples` artifact (3 separable classes, 32 px, 30/9/9 images) written without Spark."""
    from tlpipe.components.common.synthetic import write_examples

    return write_examples(tmp_path / "examples")


@pytest.fixture(scope="session")
def model_factory():
    """tests/model_factory.py (tiny trained Keras classifiers in the `model` artifact layout) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tlpipe_test_model_factory", REPO_ROOT / "tests" / "model_factory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def session_examples(tmp_path_factory) -> Path:
    """The synthetic examples artifact (same content as `synthetic_examples`), shared by the session."""
    from tlpipe.components.common.synthetic import write_examples

    return write_examples(tmp_path_factory.mktemp("examples") / "examples")


@pytest.fixture(scope="session")
def trained(model_factory, session_examples):
    """(model, history) of a tiny CNN trained on the synthetic train split."""
    return model_factory.train_model(session_examples)


@pytest.fixture
def fake_kube_api():
    """Serve a fake Kubernetes API (an http.server instance bound to 127.0.0.1) in a thread; returns
    `start(server) -> (server, kubernetes ApiClient talking to it)`; every started server is shut down after."""
    import threading

    from kubernetes import client

    servers = []

    def start(server):
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
        return server, client.ApiClient(configuration)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
