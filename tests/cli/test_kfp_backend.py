"""CONTRACT TESTS of the backend version check and `tlpipe run --watch` against a local server speaking the
KFP v2beta1 REST API (tests/pipeline/conftest.py's, with healthz reporting a version and runs that move on).

The real apiserver answers /apis/v2beta1/healthz with commit_sha, tag_name, multi_user and pipeline_store
(backend/src/apiserver/main.go); the generated kfp_server_api model keeps only multi_user.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlparse

import kfp_server_api
import pytest

from tlpipe.cli.main import main
from tlpipe.pipelines import backends
from tlpipe.pipelines.compiler import compile_pipeline

_spec = importlib.util.spec_from_file_location(
    "tlpipe_test_kfp_server", Path(__file__).resolve().parents[1] / "pipeline" / "conftest.py")
kfp_double = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kfp_double)


def _task(name: str, state: str, error: str = "", children: int = 0):
    return kfp_server_api.V2beta1PipelineTaskDetail(
        display_name=name, state=state, error=kfp_server_api.GoogleRpcStatus(message=error) if error else None,
        child_tasks=[kfp_server_api.PipelineTaskDetailChildTask(task_id=str(i)) for i in range(children)] or None)


class VersionedKfpServer(kfp_double.KfpApiServer):
    """The contract server, with healthz's tag_name and runs that walk through `steps` on each GET."""

    def __init__(self, tag_name: str):
        self.tag_name = tag_name
        self.steps: list[tuple[str, list]] = []  # (run state, task details) served one per GET of a run
        super().__init__()

    def _handler(self):
        server, base = self, super()._handler()

        class Handler(base):
            def _dispatch(self, method: str):
                path = urlparse(self.path).path.removeprefix(kfp_double.PREFIX)
                if method == "GET" and path == "/healthz":
                    server.requests.append((method, path, dict(self.headers)))
                    return self._send({"commit_sha": "0123abc", "tag_name": server.tag_name, "multi_user": False,
                                       "pipeline_store": "database"})
                if method == "GET" and path.startswith("/runs/") and server.steps:
                    run = server.runs[path.split("/")[2]]
                    run.state, tasks = server.steps.pop(0) if len(server.steps) > 1 else server.steps[0]
                    run.run_details = kfp_server_api.V2beta1RunDetails(task_details=tasks)
                return super()._dispatch(method)

        return Handler


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """serve(tag_name) -> a running VersionedKfpServer; HOME moved so no kfp context file is read."""
    monkeypatch.setenv("HOME", str(tmp_path))
    servers = []

    def start(tag_name: str) -> VersionedKfpServer:
        servers.append(VersionedKfpServer(tag_name).__enter__())
        return servers[-1]

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("backend") / "pipeline.yaml")


def _older(required: str) -> tuple[str, str]:
    """(a backend version below `required` that a compile target still serves, that target)."""
    target, version = max(((t, v) for t, v in backends.TARGETS.items()
                           if backends.version_tuple(v) < backends.version_tuple(required)),
                          key=lambda tv: backends.version_tuple(tv[1]))
    return version, target


def test_an_older_backend_is_refused_before_upload_unless_forced(serve, package, capsys, caplog):
    required = backends.required_backend(package)
    version, target = _older(required)
    server = serve(version)
    assert main(["upload", str(package), "--host", server.url]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == (f"tlpipe: error: KFP backend at {server.url} is {version} but pipeline.yaml needs "
                           f"{required} or newer: compile for it with `tlpipe compile --kfp-backend {target}`, "
                           "or pass --force")
    assert not server.pipelines
    assert main(["run", "--host", server.url, "--package", str(package)]) == 2
    assert not server.runs
    assert main(["upload", str(package), "--host", server.url, "--force"]) == 0
    assert len(server.pipelines) == 1
    assert f"is {version} but pipeline.yaml needs {required} or newer" in caplog.text
    assert "going on (--force)" in caplog.text


@pytest.mark.parametrize("tag", ["dev", "unknown"])
def test_an_unknown_backend_version_warns_and_goes_on(serve, package, caplog, tag):
    server = serve(tag)
    assert main(["upload", str(package), "--host", server.url]) == 0
    assert f"reports version '{tag}': cannot check it is at least" in caplog.text


def test_host_defaults_to_kf_pipelines_endpoint(serve, package, monkeypatch):
    server = serve("2.17.0")
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
    assert main(["upload", str(package)]) == 0
    assert len(server.pipelines) == 1 and ("GET", "/healthz") in [(m, p) for m, p, _ in server.requests]


def test_unknown_parameter_names_the_close_match(serve, package, capsys):
    server = serve("2.17.0")
    assert main(["run", "--host", server.url, "--package", str(package), "-p", "epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == "tlpipe: error: -p epoch=3: unknown pipeline parameter 'epoch'; did you mean epochs?"
    assert not server.runs


def test_watch_follows_a_run_to_success(serve, package, capsys):
    server = serve("2.17.0")
    server.steps = [("PENDING", []), ("RUNNING", [_task("ingest-op", "RUNNING")]),
                    ("SUCCEEDED", [_task("ingest-op", "SUCCEEDED"), _task("register-op", "SUCCEEDED")])]
    assert main(["run", "--host", server.url, "--package", str(package), "--watch", "--watch-interval", "0"]) == 0
    out = capsys.readouterr().out
    states = [line.split(" ", 1)[1] for line in out.splitlines() if line[:2].isdigit()]
    assert states == ["run PENDING", "run RUNNING", "  ingest-op: RUNNING", "run SUCCEEDED",
                      "  ingest-op: SUCCEEDED", "  register-op: SUCCEEDED"]


def test_watch_exits_1_naming_the_failed_task_and_its_error(serve, package, capsys):
    server = serve("2.17.0")
    failed = [_task("root", "FAILED", "Inner task failed: 'train-frozen-op'", children=3),
              _task("ingest-op", "SUCCEEDED"),
              _task("train-frozen-op", "FAILED", "ValueError: epochs must be at least 1 (got 0)")]
    server.steps = [("RUNNING", [_task("ingest-op", "RUNNING")]), ("FAILED", failed)]
    assert main(["run", "--host", server.url, "--package", str(package), "--watch", "--watch-interval", "0"]) == 1
    captured = capsys.readouterr()
    (run_id,) = server.runs
    assert "Traceback" not in captured.err
    assert captured.err.strip() == (
        f"tlpipe: error: run {run_id} ended FAILED: task 'train-frozen-op' failed: ValueError: epochs must be at "
        f"least 1 (got 0) (details: {server.url}/#/runs/details/{run_id})")
    assert "  train-frozen-op: FAILED" in captured.out
