"""The embedded stack is real: S3 round-trips and refuses bad credentials, MLflow stores artifacts in S3;
nothing else the stack opened answers without credentials."""

from __future__ import annotations

import http.client
import io
import os
import socket
import stat
from pathlib import Path
from urllib.parse import urlparse

import grpc
import mlflow
import numpy as np
import pytest
import requests
from minio import Minio
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.mlflow_utils import connect, stage_run
from tlpipe.components.common.settings import S3Settings
from tlpipe.stack.servers import Stack, _group_members


def test_object_round_trips_through_s3(s3_client, bucket):
    payload = os.urandom(6 * 1024 * 1024)  # above the multipart threshold of 5 MiB parts
    s3_client.put_object(bucket, "dir/blob.bin", io.BytesIO(payload), len(payload), part_size=5 * 1024 * 1024)
    assert s3_client.get_object(bucket, "dir/blob.bin").read() == payload
    assert list(s3lib.iter_keys(s3_client, f"s3://{bucket}/dir")) == ["dir/blob.bin"]


def test_wrong_secret_and_unknown_key_are_refused(stack, s3_client, bucket):
    env = stack.env()
    s3_client.put_object(bucket, "kept.txt", io.BytesIO(b"kept"), 4)
    for access, secret in ((env["AWS_ACCESS_KEY_ID"], "not-the-secret"), ("UNKNOWNKEY", env["AWS_SECRET_ACCESS_KEY"])):
        client = s3lib.client(S3Settings(env["S3_ENDPOINT_URL"], access, secret))
        attempts = {"list": lambda c=client: c.list_objects(bucket).__next__(),
                    "get": lambda c=client: c.get_object(bucket, "kept.txt").read(),
                    "put": lambda c=client: c.put_object(bucket, "new.txt", io.BytesIO(b"x"), 1),
                    "delete": lambda c=client: c.remove_object(bucket, "kept.txt")}
        for what, attempt in attempts.items():
            with pytest.raises(s3lib.S3AccessError, match=f"refused bucket '{bucket}'") as err:
                s3lib.retry(attempt, what=what, bucket=bucket, endpoint=env["S3_ENDPOINT_URL"])
            assert env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)
    assert list(s3lib.iter_keys(s3_client, f"s3://{bucket}")) == ["kept.txt"]
    s3_client.remove_object(bucket, "kept.txt")
    assert list(s3lib.iter_keys(s3_client, f"s3://{bucket}")) == []


def test_anonymous_access_is_refused(stack, s3_client, bucket):
    s3_client.put_object(bucket, "secret.txt", io.BytesIO(b"x"), 1)
    anonymous = Minio(stack.env()["S3_ENDPOINT_URL"].split("//")[1], secure=False, region="us-east-1")
    with pytest.raises(Exception, match="AccessDenied|Access Denied"):
        anonymous.get_object(bucket, "secret.txt").read()


def _listening(pid: int) -> tuple[set[tuple[str, int]], set[str]]:
    """The TCP (host, port) pairs and unix socket paths that process `pid` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    tcp = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            address, port = fields[1].split(":")
            tcp.add((socket.inet_ntoa(bytes.fromhex(address)[::-1]), int(port, 16)))
    unix = set()
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[3] == "00010000" and fields[6] in inodes:  # flag __SO_ACCEPTCON: listening
            unix.add(fields[7])
    return tcp, unix


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=5)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(self.unix_path)


def _anonymous_requests(bucket: str) -> list[tuple[str, str, bytes | None]]:
    """Reads, writes, deletes and listings in the forms the master, volume and filer HTTP APIs take."""
    obj = f"/buckets/{bucket}/secret.txt"
    return [("GET", "/", None), ("GET", obj, None), ("HEAD", obj, None), ("GET", f"/buckets/{bucket}/", None),
            ("PUT", f"/buckets/{bucket}/anonymous.txt", b"x"), ("POST", f"/buckets/{bucket}/anonymous.txt", b"x"),
            ("DELETE", obj, None), ("GET", "/dir/assign", None), ("POST", "/dir/assign", None),
            ("GET", "/dir/status", None), ("GET", "/vol/status", None), ("GET", "/status", None),
            ("POST", "/1,01637037d6", b"x"), ("DELETE", "/1,01637037d6", None)]


def _http_answers(method: str, url: str, body: bytes | None, **kwargs) -> int | None:
    """The HTTP status of one request, or None when the connection is refused or torn down (no TLS client cert)."""
    try:
        return requests.request(method, url, data=body, timeout=5, allow_redirects=False, **kwargs).status_code
    except requests.RequestException:
        return None


def _grpc_listing(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.StatusCode:
    """The status of a filer ListEntries("/buckets") call: OK from an open filer, UNIMPLEMENTED from another
    open gRPC server, UNAVAILABLE when the connection is refused."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        call = channel.unary_stream("/filer_pb.SeaweedFiler/ListEntries")
        try:
            list(call(b"\x0a\x08/buckets", timeout=5))  # ListEntriesRequest{directory: "/buckets"}
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_no_port_of_the_stack_answers_without_credentials(stack, s3_client, bucket):
    s3_client.put_object(bucket, "secret.txt", io.BytesIO(b"secret"), 6)
    servers = stack.servers()
    s3_port = urlparse(servers["s3"].url).port
    weed_tcp, weed_unix = _listening(servers["s3"].pid)
    mlflow_tcp = set().union(*(_listening(pid)[0] for pid in _group_members(servers["mlflow"].pid)))
    # MLflow answers without credentials, on 127.0.0.1 only (stated in the README); so does S3, which needs SigV4.
    assert mlflow_tcp == {("127.0.0.1", urlparse(servers["mlflow"].url).port)}
    assert {host for host, _ in weed_tcp} == {"127.0.0.1"} and ("127.0.0.1", s3_port) in weed_tcp
    others = sorted(port for _, port in weed_tcp if port != s3_port)
    assert len(others) >= 7, weed_tcp  # master, volume, filer: HTTP and gRPC; the S3 gateway's gRPC

    for port in others:
        for method, path, body in _anonymous_requests(bucket):
            for scheme in ("http", "https"):
                status = _http_answers(method, f"{scheme}://127.0.0.1:{port}{path}", body, verify=False)
                assert status is None or status >= 300, f"{method} {scheme}://127.0.0.1:{port}{path} -> {status}"
        assert _grpc_listing(f"127.0.0.1:{port}") == grpc.StatusCode.UNAVAILABLE, port
    for path in weed_unix:
        s3_requests = [("GET", f"/{bucket}/secret.txt", None), ("GET", f"/{bucket}", None),
                       ("PUT", f"/{bucket}/anonymous.txt", b"x"), ("DELETE", f"/{bucket}/secret.txt", None)]
        is_s3 = path.endswith(f"-s3-{s3_port}.sock")  # the S3 gateway's socket: SigV4 as on its port
        for method, url, body in s3_requests if is_s3 else _anonymous_requests(bucket):
            connection = _UnixHTTPConnection(path)
            try:
                connection.request(method, url, body=body)
                status = connection.getresponse().status
            except (OSError, http.client.HTTPException):
                status = None
            finally:
                connection.close()
            assert status is None or status >= 300, f"{method} {url} on {path} -> {status}"
        if "grpc" in path:
            assert _grpc_listing(f"unix:{path}") == grpc.StatusCode.UNAVAILABLE, path

    # Nothing was written or deleted, and the same probes with the stack's certificate are answered.
    assert list(s3lib.iter_keys(s3_client, f"s3://{bucket}")) == ["secret.txt"]
    assert s3_client.get_object(bucket, "secret.txt").read() == b"secret"
    tls = stack.state_dir / "tls"
    cert = (str(tls / "node.pem"), str(tls / "node.key"))
    answered = {port: _http_answers("GET", f"https://127.0.0.1:{port}/dir/status", None, cert=cert,
                                    verify=str(tls / "ca.pem")) for port in others}
    assert 200 in answered.values(), answered  # the master
    credentials = grpc.ssl_channel_credentials(*((tls / name).read_bytes() for name in ("ca.pem", "node.key", "node.pem")))
    listed = {port: _grpc_listing(f"127.0.0.1:{port}", credentials) for port in others}
    assert grpc.StatusCode.OK in listed.values(), listed  # the filer


def test_stack_secrets_are_private(stack):
    for path in (stack.identities_file, stack.state_dir / "security.toml", *(stack.state_dir / "tls").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((stack.state_dir / "tls").stat().st_mode) == 0o700
    keys = [line.split('"')[1] for line in (stack.state_dir / "security.toml").read_text().splitlines()
            if line.startswith("key = ") and not line.startswith('key = "/')]
    assert len(keys) == 4
    logs = "".join(Path(s.log).read_text(errors="replace") for s in stack.servers().values())
    assert not any(key in logs for key in keys)


def test_env_file_is_private_and_complete(stack):
    mode = stat.S_IMODE(stack.env_file.stat().st_mode)
    assert mode == 0o600
    text = stack.env_file.read_text()
    for key in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"):
        assert f"export {key}=" in text


def test_mlflow_run_artifact_lands_in_s3_and_model_gets_alias(stack, s3_client):
    connect()
    with stage_run("unit", kfp_run_id="kfp-test-1", experiment="stack-test") as run:
        mlflow.log_param("learning_rate", 0.001)
        mlflow.log_text("hello", "notes/hello.txt")
        model = LogisticRegression().fit(np.array([[0.0], [1.0], [0.1], [0.9]]), [0, 1, 0, 1])
        mlflow.sklearn.log_model(model, name="model", registered_model_name="stack-test-model")
    client = MlflowClient()
    parent = client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["kfp_run_id"] == "kfp-test-1"
    # The artifact is stored in the mlflow bucket of the real S3 server (proxied by the tracking server).
    keys = list(s3lib.iter_keys(s3_client, "s3://mlflow/artifacts"))
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys
    version = client.search_model_versions("name='stack-test-model'")[0].version
    client.set_registered_model_alias("stack-test-model", "champion", version)
    assert client.get_model_version_by_alias("stack-test-model", "champion").version == version
    loaded = mlflow.pyfunc.load_model("models:/stack-test-model@champion")
    assert list(loaded.predict(np.array([[0.0], [1.0]]))) == [0, 1]


def test_up_reuses_a_running_stack(stack):
    before = {name: s.pid for name, s in stack.servers().items()}
    Stack(stack.state_dir).up()
    assert {name: s.pid for name, s in stack.servers().items()} == before


def test_down_leaves_no_process_behind(tmp_path):
    stack = Stack(tmp_path / "state")
    servers = stack.up()
    assert all(row["healthy"] for row in stack.status())
    pids = [s.pid for s in servers.values()]
    url = servers["mlflow"].url
    stack.down(grace=5)
    assert all(not _group_members(pid) for pid in pids)
    assert stack.status() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=2)


def test_stack_status_command_reports_both_servers(stack, capsys):
    from tlpipe.cli.main import main

    assert main(["stack", "--state-dir", str(stack.state_dir), "status"]) == 0
    out = capsys.readouterr().out
    assert out.count("healthy") == 2 and stack.env()["MLFLOW_TRACKING_URI"] in out
    assert stack.env()["AWS_SECRET_ACCESS_KEY"] not in out
