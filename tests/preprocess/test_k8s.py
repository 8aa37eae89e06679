"""The k8s backend: the SparkApplication against the operator's published models, and the create/wait/delete
loop through the real `kubernetes` client against a local HTTP server speaking the custom-objects REST API."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubeflow_spark_api.models import SparkV1beta2SparkApplication

from tlpipe.components.preprocess import core, job, k8s

APPS = re.compile(r"^/apis/sparkoperator\.k8s\.io/v1beta2/namespaces/([^/]+)/sparkapplications(?:/([^/?]+))?")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log")


class FakeApiServer(ThreadingHTTPServer):
    """Kubernetes custom objects for SparkApplications; the operator's state machine runs one step per GET."""

    def __init__(self, outcome: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.outcome = outcome  # COMPLETED | FAILED | RUNNING (never finishes)
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.gets = 0


class Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, *args):
        pass

    def _reply(self, code: int, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what):
        self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                          "message": f"{what} not found", "code": 404})

    def do_POST(self):
        self.server.requests.append(("POST", self.path))
        ns, _ = APPS.match(self.path).groups()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = (ns, body["metadata"]["name"])
        if key in self.server.objects:
            return self._reply(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
        self.server.objects[key] = body
        self._reply(201, body)

    def do_GET(self):
        self.server.requests.append(("GET", self.path))
        if POD_LOG.match(self.path):
            return self._reply(200, "Traceback (most recent call last):\nTooManyBadImagesError: 9 of 10 images",
                               "text/plain")
        ns, name = APPS.match(self.path).groups()
        obj = self.server.objects.get((ns, name))
        if obj is None:
            return self._not_found(f'sparkapplications.sparkoperator.k8s.io "{name}"')
        self.server.gets += 1
        steps = ["SUBMITTED", "RUNNING", self.server.outcome]
        state = {"state": steps[min(self.server.gets, 3) - 1]}
        if state["state"] == "FAILED":
            state["errorMessage"] = "driver container failed with ExitCode: 1, Reason: Error"
        obj["status"] = {"applicationState": state, "driverInfo": {"podName": f"{name}-driver"}}
        self._reply(200, obj)

    def do_DELETE(self):
        self.server.requests.append(("DELETE", self.path))
        ns, name = APPS.match(self.path).groups()
        if self.server.objects.pop((ns, name), None) is None:
            return self._not_found(name)
        self._reply(200, {"kind": "Status", "status": "Success"})


@pytest.fixture
def api_server(fake_kube_api):
    return lambda outcome="COMPLETED": fake_kube_api(FakeApiServer(outcome))


CONFIG = job.JobConfig(manifest="s3://data/manifest", output="s3://data/examples", image_size=160, num_shards=8)
IMAGE = "cr.example.com/team/spark:1.2.3"
FAST = {"namespace": "ml", "poll_interval_s": 0.01, "image": IMAGE}


def test_application_matches_the_operator_schema():
    body = k8s.build_application("tlpipe-preprocess-x", CONFIG, k8s.K8sOptions(image=IMAGE, executor_instances=4))
    app = SparkV1beta2SparkApplication.from_dict(body)
    assert app.spec.type == "Python" and app.spec.main_application_file.endswith("preprocess_job.py")
    assert app.spec.arguments[app.spec.arguments.index("--image-size") + 1] == "160"
    assert app.spec.executor.instances == 4 and app.spec.restart_policy.type == "Never"
    assert app.spec.driver.env_from[0].secret_ref.name == app.spec.executor.env_from[0].secret_ref.name
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(body)  # credentials come from the Secret only
    with pytest.raises(k8s.K8sJobError, match=r"fields unknown to sparkoperator.k8s.io/v1beta2: \['spec.driver.mem'\]"):
        k8s.validate_application({**body, "spec": {**body["spec"], "driver": {"mem": "1g"}}})
    with pytest.raises(k8s.K8sJobError, match="invalid SparkApplication"):
        k8s.validate_application({**body, "spec": {**body["spec"], "executor": {"instances": "many"}}})
    with pytest.raises(ValueError, match=r"unknown spark_options for backend 'k8s': \['executors'\]"):
        k8s.K8sOptions.from_dict({"executors": 3})


def test_completed_application_is_deleted(api_server):
    server, api_client = api_server("COMPLETED")
    k8s.run_job(CONFIG, k8s.K8sOptions.from_dict(FAST), api_client)
    methods = [m for m, _ in server.requests]
    assert methods[0] == "POST" and methods[-1] == "DELETE" and methods.count("GET") == 3
    assert server.objects == {}


def test_completed_application_is_kept_when_asked(api_server):
    server, api_client = api_server("COMPLETED")
    k8s.run_job(CONFIG, k8s.K8sOptions.from_dict({**FAST, "keep": True}), api_client)
    assert len(server.objects) == 1 and "DELETE" not in [m for m, _ in server.requests]


def test_failure_surfaces_the_driver_error_and_keeps_the_object(api_server):
    server, api_client = api_server("FAILED")
    with pytest.raises(k8s.K8sJobError, match=r"(?s)FAILED: driver container failed.*TooManyBadImagesError: 9 of 10"):
        k8s.run_job(CONFIG, k8s.K8sOptions.from_dict(FAST), api_client)
    assert any("/pods/tlpipe-preprocess-" in path and path.endswith("-driver/log?tailLines=40")
               for _, path in server.requests)
    assert len(server.objects) == 1  # left for `kubectl logs`; the operator's TTL removes it


def test_timeout_deletes_the_application(api_server):
    server, api_client = api_server("RUNNING")
    with pytest.raises(k8s.K8sTimeoutError, match="did not finish within 0 s .last state"):
        k8s.run_job(CONFIG, k8s.K8sOptions.from_dict({**FAST, "timeout_s": 0.05}), api_client)
    assert server.objects == {} and server.requests[-1][0] == "DELETE"


class Built(Exception):
    """Stops core.preprocess at run_job (no cluster to wait for, no schema.json to read), with the body."""


@pytest.fixture
def built(monkeypatch):
    """built(**preprocess kwargs) -> the SparkApplication that core.preprocess on the k8s backend creates."""

    def run_job(config, opts, api_client=None):
        raise Built(k8s.build_application("tlpipe-preprocess-x", config, opts))

    monkeypatch.setattr(k8s, "run_job", run_job)

    def build(**kwargs):
        with pytest.raises(Built) as stopped:
            core.preprocess("s3://data/manifest", "s3://data/examples", spark_backend="k8s", **kwargs)
        return stopped.value.args[0]

    return build


def test_spark_image_of_the_step_reaches_the_application(built):
    assert built(spark_image=IMAGE)["spec"]["image"] == IMAGE
    assert built(spark_image=IMAGE, spark_options={"image": "mine/spark:dev"})["spec"]["image"] == "mine/spark:dev"
    assert built(spark_options={"image": "mine/spark:dev"})["spec"]["image"] == "mine/spark:dev"


def test_no_spark_image_fails_at_once(monkeypatch):
    monkeypatch.setattr(k8s, "run_job", lambda *a, **kw: pytest.fail("run_job called without an image"))
    with pytest.raises(ValueError, match=r"^spark_backend 'k8s' has no Spark image: set the step's spark_image .*"
                                         r"spark_options 'image'$"):
        core.preprocess("s3://data/manifest", "s3://data/examples", spark_backend="k8s")
    with pytest.raises(ValueError, match="has no Spark image"):
        k8s.K8sOptions.from_dict({"image": ""}, spark_image="")
