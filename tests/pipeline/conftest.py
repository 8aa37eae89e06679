"""CONTRACT TEST DOUBLE: a real HTTP server on 127.0.0.1 speaking the KFP v2beta1 REST API.

No KFP API server can run here (it needs Kubernetes), so the CLI's upload/run are tested against this
server instead. It implements only the endpoints the kfp client calls, builds every response from the
`kfp_server_api` models (the published OpenAPI contract), deserialises request bodies into those models,
and validates uploaded and submitted pipeline specs against the pipeline-spec protos, as the real server does.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kfp_server_api
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

PREFIX = "/apis/v2beta1"
_api = kfp_server_api.ApiClient()


def _model(data: dict, model: str):
    """Deserialise a JSON body into a kfp_server_api model (raises on a wrong shape)."""
    return _api._ApiClient__deserialize(data, model)  # noqa: SLF001 - the generated client's own deserialiser


def _spec_from_yaml(text: str) -> dict:
    docs = [d for d in yaml.safe_load_all(text) if d]
    json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # the server rejects an invalid spec
    return docs[0]


class KfpApiServer:
    """State of the fake server: pipelines, versions, experiments, runs, and every request seen."""

    def __init__(self):
        self.pipelines: dict[str, kfp_server_api.V2beta1Pipeline] = {}
        self.versions: dict[str, list[kfp_server_api.V2beta1PipelineVersion]] = {}
        self.experiments: dict[str, kfp_server_api.V2beta1Experiment] = {}
        self.runs: dict[str, kfp_server_api.V2beta1Run] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # ----- endpoints -------------------------------------------------------------------------
    def upload_pipeline(self, query: dict, files: dict):
        now = datetime.now(UTC)
        pid, vid = str(uuid.uuid4()), str(uuid.uuid4())
        name = query["name"][0]
        spec = _spec_from_yaml(files["uploadfile"])
        pipeline = kfp_server_api.V2beta1Pipeline(pipeline_id=pid, display_name=name, created_at=now,
                                                  description=query.get("description", [""])[0])
        self.pipelines[pid] = pipeline
        self.versions[pid] = [kfp_server_api.V2beta1PipelineVersion(
            pipeline_id=pid, pipeline_version_id=vid, display_name=name, created_at=now, pipeline_spec=spec)]
        return pipeline

    def upload_version(self, query: dict, files: dict):
        pid = query["pipelineid"][0]
        if pid not in self.pipelines:
            return 404, {"error": f"pipeline {pid} not found", "code": 5}
        version = kfp_server_api.V2beta1PipelineVersion(
            pipeline_id=pid, pipeline_version_id=str(uuid.uuid4()), display_name=query["name"][0],
            created_at=datetime.now(UTC), pipeline_spec=_spec_from_yaml(files["uploadfile"]))
        self.versions[pid].append(version)
        return version

    def list_pipelines(self, query: dict):
        found = list(self.pipelines.values())
        for predicate in json.loads(query.get("filter", ["{}"])[0]).get("predicates", []):
            if predicate["key"] == "display_name":
                found = [p for p in found if p.display_name == predicate["stringValue"]]
        return kfp_server_api.V2beta1ListPipelinesResponse(pipelines=found or None, total_size=len(found))

    def list_versions(self, pid: str):
        versions = sorted(self.versions.get(pid, []), key=lambda v: v.created_at, reverse=True)
        return kfp_server_api.V2beta1ListPipelineVersionsResponse(pipeline_versions=versions, total_size=len(versions))

    def list_experiments(self, query: dict):
        found = list(self.experiments.values())
        for predicate in json.loads(query.get("filter", ["{}"])[0]).get("predicates", []):
            if predicate["key"] == "display_name":
                found = [e for e in found if e.display_name == predicate["stringValue"]]
        return kfp_server_api.V2beta1ListExperimentsResponse(experiments=found or None, total_size=len(found))

    def create_experiment(self, body: dict):
        experiment = _model(body, "V2beta1Experiment")
        experiment.experiment_id = str(uuid.uuid4())
        experiment.created_at = datetime.now(UTC)
        self.experiments[experiment.experiment_id] = experiment
        return experiment

    def create_run(self, body: dict):
        run = _model(body, "V2beta1Run")
        if run.pipeline_spec is not None:
            spec = run.pipeline_spec
            if "pipeline_spec" in spec:  # the client wraps the spec when it carries a platform (Kubernetes) spec
                json_format.ParseDict(spec.get("platform_spec", {}), pipeline_spec_pb2.PlatformSpec())
                spec = spec["pipeline_spec"]
            json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
        elif run.pipeline_version_reference is None:
            return 400, {"error": "run has neither pipeline_spec nor pipeline_version_reference", "code": 3}
        if run.experiment_id and run.experiment_id not in self.experiments:
            return 404, {"error": f"experiment {run.experiment_id} not found", "code": 5}
        run.run_id, run.state, run.created_at = str(uuid.uuid4()), "PENDING", datetime.now(UTC)
        self.runs[run.run_id] = run
        return run

    # ----- HTTP plumbing ---------------------------------------------------------------------
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def _send(self, result):
                status, payload = result if isinstance(result, tuple) else (200, result)
                body = json.dumps(_api.sanitize_for_serialization(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str):
                try:
                    self._dispatch(method)
                except (ValueError, KeyError, json_format.ParseError) as exc:  # what the real server answers 400 to
                    self._send((400, {"error": f"{type(exc).__name__}: {exc}", "code": 3}))

            def _dispatch(self, method: str):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                server.requests.append((method, url.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = url.path.removeprefix(PREFIX)
                if method == "GET" and path == "/healthz":
                    return self._send(kfp_server_api.V2beta1GetHealthzResponse(multi_user=False))
                if method == "GET" and path == "/pipelines":
                    return self._send(server.list_pipelines(query))
                if method == "GET" and path.startswith("/pipelines/") and path.endswith("/versions"):
                    return self._send(server.list_versions(path.split("/")[2]))
                if method == "POST" and path == "/pipelines/upload":
                    return self._send(server.upload_pipeline(query, self._files(raw)))
                if method == "POST" and path == "/pipelines/upload_version":
                    return self._send(server.upload_version(query, self._files(raw)))
                if method == "GET" and path == "/experiments":
                    return self._send(server.list_experiments(query))
                if method == "POST" and path == "/experiments":
                    return self._send(server.create_experiment(json.loads(raw)))
                if method == "POST" and path == "/runs":
                    return self._send(server.create_run(json.loads(raw)))
                if method == "GET" and path.startswith("/runs/"):
                    run = server.runs.get(path.split("/")[2])
                    return self._send(run if run else (404, {"error": "run not found", "code": 5}))
                return self._send((404, {"error": f"{method} {url.path} is not part of this contract double",
                                         "code": 12}))

            def _files(self, raw: bytes) -> dict:
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                return {part.get_param("name", header="content-disposition"): part.get_content()
                        for part in message.iter_parts()}

            def do_GET(self):  # noqa: N802 - http.server naming
                self._route("GET")

            def do_POST(self):  # noqa: N802
                self._route("POST")

        return Handler


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    """The contract server, running; HOME is moved so no developer kfp context file is read."""
    monkeypatch.setenv("HOME", str(tmp_path))
    with KfpApiServer() as server:
        yield server
