"""The deploy step: the InferenceService against the kserve SDK's published models, and the create/patch/wait
loop through the real `kubernetes` client against a local HTTP server speaking the custom-objects API, with a
fake KServe controller (a predictor that becomes Ready, one that crash-loops, one that never becomes Ready)."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from tlpipe.components.deploy import core, k8s
from tlpipe.components.deploy import inference_service as isvc
from tlpipe.components.deploy.params import DeployParams

ISVCS = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/?]+))?")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)/log)?")
BAD_URI = "s3://mlflow/artifacts/1/models/m-broken/artifacts"


def merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


class FakeKube(ThreadingHTTPServer):
    """InferenceServices; the controller makes a generation Ready on its second GET unless its storageUri is
    BAD_URI (its predictor crash-loops) or `never_ready` (it stays Unknown)."""

    def __init__(self, never_ready=False):
        super().__init__(("127.0.0.1", 0), Handler)
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.never_ready = never_ready
        self.gets: dict[int, int] = {}

    def spec_of(self, ns="tlpipe", name="fish-classifier"):
        return self.objects[(ns, name)]["spec"]["predictor"]


class Handler(BaseHTTPRequestHandler):
    server: FakeKube

    def log_message(self, *args):
        pass

    def _reply(self, code, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_POST(self):
        body = self._body()
        self.server.requests.append(("POST", self.path, body))
        ns, _ = ISVCS.match(self.path).groups()
        body["metadata"]["generation"] = 1
        self.server.objects[(ns, body["metadata"]["name"])] = json.loads(json.dumps(body))
        self._reply(201, body)

    def do_PATCH(self):
        patch = self._body()
        self.server.requests.append(("PATCH", self.path, patch))
        assert self.headers["Content-Type"] == "application/merge-patch+json"
        ns, name = ISVCS.match(self.path).groups()
        obj = merge(self.server.objects[(ns, name)], json.loads(json.dumps(patch)))
        obj["metadata"]["generation"] += 1
        self._reply(200, obj)

    def _broken(self, ns):
        return any(o["spec"]["predictor"]["model"]["storageUri"] == BAD_URI
                   for (n, _), o in self.server.objects.items() if n == ns)

    def do_GET(self):
        self.server.requests.append(("GET", self.path, None))
        pods = PODS.match(self.path)
        if pods:
            ns, pod = pods.groups()
            if pod:
                return self._reply(200, "Traceback (most recent call last):\nModuleNotFoundError: No module "
                                        "named 'tlpipe'", "text/plain")
            items = []
            if self._broken(ns):
                items = [{"metadata": {"name": "fish-classifier-predictor-7d9f-x2"}, "status": {
                    "containerStatuses": [{"name": "kserve-container", "image": "tlpipe/train:0.1.0",
                                           "imageID": "", "ready": False, "restartCount": 3,
                                           "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                                 "message": "back-off 40s restarting"}}}]}}]
            return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        ns, name = ISVCS.match(self.path).groups()
        obj = self.server.objects.get((ns, name))
        if obj is None:
            return self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "NotFound", "code": 404})
        generation = obj["metadata"]["generation"]
        self.server.gets[generation] = self.server.gets.get(generation, 0) + 1
        bad = obj["spec"]["predictor"]["model"]["storageUri"] == BAD_URI
        if self.server.never_ready or bad or self.server.gets[generation] < 2:
            obj["status"] = {**obj.get("status", {}), "conditions": [
                {"type": "Ready", "status": "Unknown" if not bad else "False",
                 "reason": "PredictorConfigurationReady not ready" if not bad else "ContainersNotReady"}]}
        else:
            obj["status"] = {"observedGeneration": generation, "url": f"http://{name}-{ns}.example.com",
                             "conditions": [{"type": "Ready", "status": "True"}]}
        self._reply(200, obj)


@pytest.fixture
def kube(fake_kube_api):
    return lambda **kwargs: fake_kube_api(FakeKube(**kwargs))


class Registry:
    """The MLflow client calls deploy makes, over aliases and versions whose files are proxied by the server."""

    def __init__(self, aliases, uris=None):
        self.aliases, self.uris = aliases, uris or {}

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if alias not in self.aliases:  # what the MLflow server answers for an alias that is not set
            raise MlflowException(f"alias {alias} not found", error_code=INVALID_PARAMETER_VALUE)
        return SimpleNamespace(version=self.aliases[alias])

    def get_model_version_download_uri(self, name, version):
        return self.uris.get(version, f"mlflow-artifacts:/1/models/m-v{version}/artifacts")


def uri(version):
    return f"s3://mlflow/artifacts/1/models/m-v{version}/artifacts"


FAST = {"deploy": "kserve", "ready_timeout_s": 5}
SERVERLESS = {**FAST, "deployment_mode": "Serverless", "canary_traffic_percent": 10}


def test_inference_service_matches_the_kserve_models():
    body = isvc.build("fish", isvc.Target("3", uri(3), "4", uri(4), 10), DeployParams(**SERVERLESS))
    predictor = body["spec"]["predictor"]
    assert predictor["model"] == {"modelFormat": {"name": "mlflow"}, "runtime": "tlpipe-mlflow",
                                  "storageUri": uri(4)}
    assert predictor["canaryTrafficPercent"] == 10 and predictor["serviceAccountName"] == "tlpipe-predictor"
    assert isvc.served(body) == ("3", "4")
    assert body["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(body)
    bad = json.loads(json.dumps(body))
    bad["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    bad["spec"]["predictor"]["canaryTrafficPercent"] = "10"
    with pytest.raises(isvc.InvalidInferenceServiceError,
                       match=r"spec.predictor.model.storageURI: unknown field of V1beta1ModelSpec; "
                             r"spec.predictor.canaryTrafficPercent: expected int, got str '10'"):
        isvc.validate(bad)
    assert isvc.model_errors("V1beta1InferenceService", body) == []
    missing = json.loads(json.dumps(body))
    del missing["spec"]["predictor"]["model"]["modelFormat"]
    with pytest.raises(isvc.InvalidInferenceServiceError, match="`model_format`, must not be `None`"):
        isvc.validate(missing)


@pytest.mark.parametrize(("change", "message"), [
    ({"canary_traffic_percent": 10}, "needs deployment_mode Serverless"),
    ({"canary_traffic_percent": 100, "deployment_mode": "Serverless"}, r"canary_traffic_percent must be in 0..99"),
    ({"deploy": "on"}, r"deploy must be one of \('off', 'kserve'\)"),
    ({"inference_service": "Fish_v2"}, "inference_service must be a DNS label"),
    ({"artifacts_destination": "gs://bucket/x"}, "artifacts_destination must be an s3:// URI"),
])
def test_bad_parameters_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        DeployParams(**change).validate()


def test_storage_uri_of_proxied_and_direct_artifacts():
    registry = Registry({}, {"1": "mlflow-artifacts:/7/models/m-a/artifacts", "2": "s3://b/m/",
                             "3": "file:///tmp/mlruns/m"})
    assert isvc.storage_uri(registry, "fish", "1", "s3://mlflow/artifacts") == "s3://mlflow/artifacts/7/models/m-a/artifacts"
    assert isvc.storage_uri(registry, "fish", "2", "s3://mlflow/artifacts") == "s3://b/m"
    with pytest.raises(ValueError, match="version 3 is stored at file:///tmp/mlruns/m, which KServe cannot download"):
        isvc.storage_uri(registry, "fish", "3", "s3://mlflow/artifacts")


def test_off_touches_nothing(kube):
    server, api_client = kube()
    assert core.deploy("fish", DeployParams(), api_client, Registry({"champion": "1"})) == core.DeployResult("", "", "")
    assert server.requests == []


def _fresh_python(code: str):
    """Run `code` in a new interpreter (nothing imported yet); its completed process, which must succeed."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def test_the_pipeline_task_with_deploy_off_returns_at_once():
    """The pipeline's deploy task (the adapter, as KFP runs it) with the default deploy=off: empty outputs within
    a second, without loading mlflow or the kubernetes client, so it reaches neither the registry nor a cluster."""
    out = _fresh_python("import sys, time; from tlpipe.components.deploy.component import deploy_op; "
                        "began = time.monotonic(); outputs = deploy_op(model_version='3'); "
                        "seconds = time.monotonic() - began; print(tuple(outputs), seconds < 1, "
                        "sorted(m for m in ('mlflow', 'kubernetes') if m in sys.modules))")
    assert out.stdout.strip() == "('', '', '') True []"
    assert "deploy is off: no InferenceService" in out.stderr


def test_champion_is_created_then_patched_when_a_new_champion_wins(kube):
    server, api_client = kube()
    result = core.deploy("fish", DeployParams(**FAST), api_client, Registry({"champion": "1", "challenger": "1"}),
                         poll_interval_s=0.01)
    assert result == core.DeployResult("http://fish-classifier-tlpipe.example.com", "1", "")
    assert server.spec_of()["model"]["storageUri"] == uri(1)
    assert server.objects[("tlpipe", "fish-classifier")]["metadata"]["annotations"][
        "serving.kserve.io/deploymentMode"] == "RawDeployment"
    core.deploy("fish", DeployParams(**FAST), api_client, Registry({"champion": "2", "challenger": "2"}),
                poll_interval_s=0.01)
    assert [m for m, _, _ in server.requests if m != "GET"] == ["POST", "PATCH"]
    assert server.spec_of()["model"]["storageUri"] == uri(2) and "canaryTrafficPercent" not in server.spec_of()


def test_challenger_goes_out_as_canary_then_is_promoted_and_rolled_back(kube):
    server, api_client = kube()
    registry = Registry({"champion": "1", "challenger": "2"})
    result = core.deploy("fish", DeployParams(**SERVERLESS), api_client, registry, poll_interval_s=0.01)
    assert result.champion == "1" and result.canary == "2"
    posted, patched = [b for m, _, b in server.requests if m in ("POST", "PATCH")]
    assert posted["spec"]["predictor"]["model"]["storageUri"] == uri(1)  # the champion at 100 % first
    assert "canaryTrafficPercent" not in posted["spec"]["predictor"]
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert server.spec_of()["model"]["storageUri"] == uri(2)

    before = core.move_traffic("tlpipe", "fish-classifier", "fish", "2", registry, api_client, poll_interval_s=0.01)
    assert before == ("1", "2")
    assert "canaryTrafficPercent" not in server.spec_of() and server.spec_of()["model"]["storageUri"] == uri(2)
    last_patch = [b for m, _, b in server.requests if m == "PATCH"][-1]
    assert last_patch["spec"]["predictor"]["canaryTrafficPercent"] is None  # the patch removes the canary

    assert core.move_traffic("tlpipe", "fish-classifier", "fish", "1", registry, api_client,
                             poll_interval_s=0.01) == ("2", "")
    assert server.spec_of()["model"]["storageUri"] == uri(1)
    assert isvc.served(server.objects[("tlpipe", "fish-classifier")]) == ("1", "")
    with pytest.raises(ValueError, match="serves registered model 'fish', not 'cat'"):
        core.move_traffic("tlpipe", "fish-classifier", "cat", "1", registry, api_client)


def test_crashing_predictor_fails_with_its_output_and_the_old_spec_is_restored(kube):
    server, api_client = kube()
    core.deploy("fish", DeployParams(**FAST), api_client, Registry({"champion": "1"}), poll_interval_s=0.01)
    with pytest.raises(k8s.DeployError, match=r"(?s)the predictor failed: pod fish-classifier-predictor-7d9f-x2 "
                                              r"container kserve-container: CrashLoopBackOff: back-off 40s.*"
                                              r"No module named 'tlpipe'.*restored the previous spec .*champion "
                                              r"version 1\)"):
        core.deploy("fish", DeployParams(**FAST), api_client, Registry({"champion": "2"}, {"2": BAD_URI}),
                    poll_interval_s=0.01)
    assert server.spec_of()["model"]["storageUri"] == uri(1)
    assert any(p.endswith("/log?container=kserve-container&previous=True&tailLines=20")
               for _, p, _ in server.requests)


def test_predictor_never_ready_times_out_naming_the_service(kube):
    server, api_client = kube(never_ready=True)
    with pytest.raises(k8s.DeployTimeoutError, match=r"tlpipe/fish-classifier was not Ready within 0.2 s "
                                                     r"\(last: Ready=Unknown \(PredictorConfigurationReady"):
        core.deploy("fish", DeployParams(**{**FAST, "ready_timeout_s": 0.2}), api_client,
                    Registry({"champion": "1"}), poll_interval_s=0.02)
    assert len(server.objects) == 1  # a new service that failed is left for `kubectl describe`


def test_no_champion_is_one_clear_error(kube):
    _, api_client = kube()
    with pytest.raises(ValueError, match="registered model 'fish' has no 'champion' alias: nothing to deploy"):
        core.deploy("fish", DeployParams(**FAST), api_client, Registry({}))


def test_adapter_defaults_are_the_params_defaults():
    import dataclasses
    import inspect

    from tlpipe.components.deploy.component import deploy_op
    from tlpipe.components.register.params import RegisterParams

    adapter = {p.name: p.default for p in inspect.signature(deploy_op).parameters.values()
               if p.default is not inspect.Parameter.empty}
    owner = {f.name: f.default for f in dataclasses.fields(DeployParams)}
    assert adapter == {**owner, "registered_model_name": RegisterParams.registered_model_name}


def test_the_sdk_models_load_without_the_kserve_server():
    out = _fresh_python("import sys; from tlpipe.components.deploy import inference_service as i; "
                        "i.validate(i.build('fish', i.Target('1', 's3://b/m'), i.DeployParams())); "
                        "print(sorted(m for m in ('grpc', 'fastapi', 'cloudevents', 'kserve.model_server') "
                        "if m in sys.modules))")
    assert out.stdout.strip() == "[]"
