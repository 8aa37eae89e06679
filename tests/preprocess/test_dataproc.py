"""The Data Proc backend against a real local gRPC server built from the protos shipped in `yandexcloud`.

The server speaks TLS like api.cloud.yandex.net and implements the endpoint discovery the SDK does first
(ApiEndpointService), ClusterService, JobService and OperationService; the SDK is used unchanged, only its
API endpoint and trusted root certificate differ.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import threading
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import any_pb2
from google.rpc import status_pb2
from yandex.cloud.dataproc.v1 import (
    cluster_pb2,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from yandex.cloud.endpoint import api_endpoint_pb2, api_endpoint_service_pb2, api_endpoint_service_pb2_grpc
from yandex.cloud.operation import operation_pb2, operation_service_pb2_grpc

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.preprocess import dataproc, job

TOKEN = "t1.test-iam-token"


def _packed(message) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


class FakeDataproc(api_endpoint_service_pb2_grpc.ApiEndpointServiceServicer,
                   cluster_service_pb2_grpc.ClusterServiceServicer, job_service_pb2_grpc.JobServiceServicer,
                   operation_service_pb2_grpc.OperationServiceServicer):
    """Data Proc as its protos describe it: operations, cluster and job lifecycles; records every call."""

    def __init__(self, address: str, job_outcome: str = "DONE", refuse_create: bool = False,
                 fail_start: bool = False):
        self.address, self.job_outcome, self.refuse_create = address, job_outcome, refuse_create
        self.fail_start = fail_start
        self.calls: list[str] = []
        self.requests: dict[str, object] = {}
        self.clusters: dict[str, str] = {}
        self.operations: dict[str, operation_pb2.Operation] = {}
        self.job_polls = 0
        self.lock = threading.Lock()

    def _record(self, name, request, context):
        with self.lock:
            self.calls.append(name)
            self.requests[name] = request
        if name != "ApiEndpointService.List" and ("authorization", f"Bearer {TOKEN}") not in context.invocation_metadata():
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong IAM token")

    def _operation(self, metadata, response=None, error=None) -> operation_pb2.Operation:
        op = operation_pb2.Operation(id=f"op{len(self.operations)}", done=False, metadata=_packed(metadata))
        self.operations[op.id] = op
        done = operation_pb2.Operation()
        done.CopyFrom(op)
        done.done = True
        if error is not None:
            done.error.CopyFrom(error)
        elif response is not None:
            done.response.CopyFrom(_packed(response))
        self.operations[op.id] = done
        return op

    # endpoint discovery: every service lives here
    def List(self, request, context):
        if isinstance(request, api_endpoint_service_pb2.ListApiEndpointsRequest):
            self._record("ApiEndpointService.List", request, context)
            return api_endpoint_service_pb2.ListApiEndpointsResponse(endpoints=[
                api_endpoint_pb2.ApiEndpoint(id=s, address=self.address) for s in ("dataproc", "operation", "iam")])
        raise NotImplementedError

    # ClusterService
    def Create(self, request, context):
        if isinstance(request, cluster_service_pb2.CreateClusterRequest):
            self._record("ClusterService.Create", request, context)
            if self.refuse_create:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "The limit on the number of clusters is exceeded")
            cluster_id = f"c9q{len(self.clusters):05d}"
            self.clusters[cluster_id] = "ERROR" if self.fail_start else "RUNNING"
            error = status_pb2.Status(code=9, message="subnet has no NAT") if self.fail_start else None
            return self._operation(cluster_service_pb2.CreateClusterMetadata(cluster_id=cluster_id),
                                   cluster_pb2.Cluster(id=cluster_id, name=request.name, status=cluster_pb2.Cluster.RUNNING),
                                   error)
        self._record("JobService.Create", request, context)
        if self.clusters.get(request.cluster_id) != "RUNNING":
            context.abort(grpc.StatusCode.NOT_FOUND, f"cluster {request.cluster_id} not found")
        return self._operation(job_service_pb2.CreateJobMetadata(cluster_id=request.cluster_id, job_id="job1"))

    def Delete(self, request, context):
        self._record("ClusterService.Delete", request, context)
        self.clusters[request.cluster_id] = "DELETED"
        return self._operation(cluster_service_pb2.DeleteClusterMetadata(cluster_id=request.cluster_id))

    # JobService: PROVISIONING -> RUNNING -> outcome over three polls
    def Get(self, request, context):
        if isinstance(request, job_service_pb2.GetJobRequest):
            self._record("JobService.Get", request, context)
            self.job_polls += 1
            status = ["PROVISIONING", "RUNNING", self.job_outcome][min(self.job_polls, 3) - 1]
            return job_pb2.Job(id=request.job_id, cluster_id=request.cluster_id, status=job_pb2.Job.Status.Value(status))
        self._record("OperationService.Get", request, context)
        return self.operations[request.operation_id]

    def ListLog(self, request, context):
        self._record("JobService.ListLog", request, context)
        lines = {0: "", 1: "INFO [tlpipe.preprocess] decode and resize 10 images ...\n",
                 2: "ERROR [tlpipe.preprocess] preprocess failed: 9 of 10 images failed to decode\n"
                 if self.job_outcome == "ERROR" else "INFO [tlpipe.preprocess] wrote examples\n"}
        return job_service_pb2.ListJobLogResponse(content=lines.get(self.job_polls - 1, ""))


def _certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "ca.pem").write_bytes(pem)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()), pem


@pytest.fixture
def dataproc_api(tmp_path, monkeypatch):
    """start(**behaviour) -> (FakeDataproc, options dict); the IAM token comes from the environment."""
    servers = []
    monkeypatch.setenv(dataproc.ENV_IAM_TOKEN, TOKEN)

    def start(**behaviour):
        key, cert = _certificate(tmp_path)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
        fake = FakeDataproc(f"127.0.0.1:{port}", **behaviour)
        api_endpoint_service_pb2_grpc.add_ApiEndpointServiceServicer_to_server(fake, server)
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(fake, server)
        job_service_pb2_grpc.add_JobServiceServicer_to_server(fake, server)
        operation_service_pb2_grpc.add_OperationServiceServicer_to_server(fake, server)
        server.start()
        servers.append(server)
        options = {"folder_id": "b1gfolder", "subnet_id": "e9bsubnet", "service_account_id": "ajesa",
                   "api_endpoint": fake.address, "root_certificates": str(tmp_path / "ca.pem"),
                   "poll_interval_s": 0.01}
        return fake, options

    yield start
    for server in servers:
        server.stop(0)


def _config(bucket):
    return job.JobConfig(manifest=f"s3://{bucket}/manifest", output=f"s3://{bucket}/examples", image_size=64)


def test_creates_runs_and_deletes_the_cluster(dataproc_api, bucket, s3_client, caplog):
    fake, options = dataproc_api()
    dataproc.run_job(_config(bucket), dataproc.DataprocOptions.from_dict(options))
    assert fake.calls[0] == "ApiEndpointService.List"
    assert fake.calls.index("ClusterService.Create") < fake.calls.index("JobService.Create")
    assert fake.calls[-2:] == ["ClusterService.Delete", "OperationService.Get"]
    assert list(fake.clusters.values()) == ["DELETED"]

    create = fake.requests["ClusterService.Create"]
    assert create.folder_id == "b1gfolder" and create.config_spec.hadoop.properties["pip:minio"] == "7.2.20"
    assert [s.role for s in create.config_spec.subclusters_spec] == [1, 3]  # MASTERNODE, COMPUTENODE
    submitted = fake.requests["JobService.Create"].pyspark_job
    assert submitted.args[:4] == ["--manifest", f"s3://{bucket}/manifest", "--output", f"s3://{bucket}/examples"]
    # the staged job file and code zip are really in S3, where the job points
    main_key = submitted.main_python_file_uri.removeprefix(f"s3a://{bucket}/")
    zip_key = submitted.python_file_uris[0].removeprefix(f"s3a://{bucket}/")
    assert b"def main" in s3_client.get_object(bucket, main_key).read()
    assert s3_client.stat_object(bucket, zip_key).size > 1000
    assert submitted.properties["spark.executorEnv.S3_ENDPOINT_URL"] == s3lib.S3Settings.from_env().endpoint_url
    secret = s3lib.S3Settings.from_env().secret_key
    assert secret not in caplog.text
    assert "job job1: DONE" in caplog.text and "[job job1] INFO [tlpipe.preprocess] wrote examples" in caplog.text


def test_failing_job_still_deletes_the_cluster(dataproc_api, bucket):
    fake, options = dataproc_api(job_outcome="ERROR")
    with pytest.raises(dataproc.DataprocError, match=r"(?s)job job1 on cluster c9q00000 ended ERROR.*9 of 10 images"):
        dataproc.run_job(_config(bucket), dataproc.DataprocOptions.from_dict(options))
    assert fake.calls[-2] == "ClusterService.Delete" and list(fake.clusters.values()) == ["DELETED"]


def test_refused_create_deletes_nothing_and_says_why(dataproc_api, bucket):
    fake, options = dataproc_api(refuse_create=True)
    with pytest.raises(dataproc.DataprocError, match="refused to create cluster .* RESOURCE_EXHAUSTED: The limit"):
        dataproc.run_job(_config(bucket), dataproc.DataprocOptions.from_dict(options))
    assert "ClusterService.Delete" not in fake.calls and "JobService.Create" not in fake.calls


def test_cluster_that_fails_to_start_is_deleted(dataproc_api, bucket):
    fake, options = dataproc_api(fail_start=True)
    with pytest.raises(dataproc.DataprocError, match="cluster c9q00000 failed to start.*subnet has no NAT"):
        dataproc.run_job(_config(bucket), dataproc.DataprocOptions.from_dict(options))
    assert "JobService.Create" not in fake.calls and list(fake.clusters.values()) == ["DELETED"]


def test_existing_cluster_is_used_and_kept(dataproc_api, bucket):
    fake, options = dataproc_api()
    fake.clusters["c9qexisting"] = "RUNNING"
    dataproc.run_job(_config(bucket), dataproc.DataprocOptions.from_dict({**options, "cluster_id": "c9qexisting"}))
    assert "ClusterService.Create" not in fake.calls and "ClusterService.Delete" not in fake.calls


def test_options_and_credentials_are_checked(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"unknown spark_options for backend 'dataproc': \['zone_id'\]"):
        dataproc.DataprocOptions.from_dict({"cluster_id": "c", "zone_id": "x"})
    with pytest.raises(ValueError, match="need either cluster_id"):
        dataproc.DataprocOptions.from_dict({"folder_id": "f"})
    for name in (dataproc.ENV_SA_KEY, dataproc.ENV_SA_KEY_FILE, dataproc.ENV_IAM_TOKEN):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(dataproc.DataprocError, match="no Yandex Cloud credentials"):
        dataproc.credentials_from_env()
    monkeypatch.setenv(dataproc.ENV_SA_KEY, json.dumps({"id": "k"}))
    with pytest.raises(dataproc.DataprocError, match="YC_SERVICE_ACCOUNT_KEY is not a service-account key JSON"):
        dataproc.credentials_from_env()
    key = {"id": "aje1", "service_account_id": "ajesa", "private_key": "-----BEGIN PRIVATE KEY-----\n..."}
    (tmp_path / "key.json").write_text(json.dumps({**key, "created_at": "2026-01-01"}))
    monkeypatch.setenv(dataproc.ENV_SA_KEY_FILE, str(tmp_path / "key.json"))
    assert dataproc.credentials_from_env() == {"service_account_key": key}
