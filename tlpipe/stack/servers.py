"""The embedded local stack: a real S3 server (SeaweedFS) and a real MLflow tracking server on 127.0.0.1.

State lives in one folder (default `./.tlpipe`, or `$TLPIPE_HOME`):
  stack.json    ports, URLs and PIDs of the running servers
  stack.env     the connection variables of docs/DESIGN.md (mode 0600; `source` it to use the stack)
  s3/           SeaweedFS data;  s3-identities.json its access key (0600)
  security.toml, tls/   SeaweedFS' certificates and signing keys (0600): only S3 (SigV4) answers without them
  mlflow/       MLflow's SQLite backend store (artifacts go to the `mlflow` bucket, proxied by the server)
  logs/         one log file per server

Servers run in their own process group and are stopped by PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import S3Settings
from tlpipe.stack import security

log = get_logger("stack")

DATA_BUCKET = "tlpipe"
MLFLOW_BUCKET = "mlflow"
SEAWEED_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


class StackError(RuntimeError):
    """A server of the embedded stack failed to start, answer or stop."""


def default_state_dir() -> Path:
    return Path(os.environ.get("TLPIPE_HOME", ".tlpipe")).resolve()


def _free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (below 55000, so SeaweedFS' +10000 gRPC default never overflows)."""
    ports: set[int] = set()
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55000:
            ports.add(port)
    return sorted(ports)


def _start_time(pid: int) -> str | None:
    """The process' start time in clock ticks (guards against PID reuse), or None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return None
    return fields[19]


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _stop_group(pid: int, start_time: str, name: str, grace: float) -> None:
    """SIGTERM the process group led by `pid`, wait up to `grace` seconds, then SIGKILL what is left."""
    if _start_time(pid) != start_time:
        log.info("%s (pid %d) is not running", name, pid)
        return
    log.info("stopping %s (pid %d)", name, pid)
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (_start_time(pid) is not None or _group_members(pid)):
        time.sleep(0.2)
    leftovers = _group_members(pid)
    if leftovers:
        log.warning("%s did not exit within %.0fs; killing %s", name, grace, leftovers)
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_members(pid):
            time.sleep(0.1)
    _start_time(pid)  # reap it if it was our child


def stop_popen_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process group that `proc` leads (started with start_new_session=True), wait up to `grace`
    seconds, then SIGKILL it; `proc` is reaped either way."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _binary(name: str) -> str:
    """A console script of this environment (the venv's bin/ first, then PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} or on PATH; install the project (make venv)")
    return found


@dataclass
class Server:
    """One running server of the stack, as recorded in stack.json."""

    name: str
    url: str
    pid: int
    start_time: str
    log: str

    @property
    def running(self) -> bool:
        return _start_time(self.pid) == self.start_time


class Stack:
    """Start, stop and inspect the embedded S3 + MLflow servers under one state folder."""

    def __init__(self, state_dir: str | os.PathLike | None = None):
        self.state_dir = Path(state_dir).resolve() if state_dir else default_state_dir()
        self.state_file = self.state_dir / "stack.json"
        self.env_file = self.state_dir / "stack.env"
        self.identities_file = self.state_dir / "s3-identities.json"
        self.logs = self.state_dir / "logs"

    # ----- state -------------------------------------------------------------------------------
    def servers(self) -> dict[str, Server]:
        if not self.state_file.exists():
            return {}
        data = json.loads(self.state_file.read_text())
        return {name: Server(**info) for name, info in data["servers"].items()}

    def _save(self, servers: dict[str, Server]) -> None:
        self.state_file.write_text(json.dumps({"servers": {n: vars(s) for n, s in servers.items()}}, indent=2))

    def _credentials(self) -> tuple[str, str]:
        """The stack's S3 key pair: generated once, kept (0600) so the persisted data stays readable."""
        if self.identities_file.exists():
            ident = json.loads(self.identities_file.read_text())["identities"][0]["credentials"][0]
            return ident["accessKey"], ident["secretKey"]
        access, secret = "TLPIPE" + secrets.token_hex(7).upper(), secrets.token_urlsafe(30)
        doc = {"identities": [{"name": "tlpipe", "credentials": [{"accessKey": access, "secretKey": secret}],
                               "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        security.write_private(self.identities_file, json.dumps(doc))
        return access, secret

    def env(self) -> dict[str, str]:
        """The connection variables (docs/DESIGN.md "Connections") that point a client at this stack."""
        servers = self.servers()
        if set(servers) != {"s3", "mlflow"}:
            raise StackError(f"the stack in {self.state_dir} is not up; run `tlpipe stack up`")
        access, secret = self._credentials()
        return {
            "S3_ENDPOINT_URL": servers["s3"].url,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
            "MLFLOW_TRACKING_URI": servers["mlflow"].url,
            "MLFLOW_S3_ENDPOINT_URL": servers["s3"].url,
            "TLPIPE_DATA_BUCKET": DATA_BUCKET,
        }

    # ----- health ------------------------------------------------------------------------------
    def s3_healthy(self, timeout: float = 3) -> bool:
        servers = self.servers()
        if "s3" not in servers:
            return False
        try:
            access, secret = self._credentials()
            settings = S3Settings(servers["s3"].url, access, secret)
            s3lib.client(settings, timeout=timeout, http_retries=0).list_buckets()
            return True
        except Exception:
            return False

    def mlflow_healthy(self, timeout: float = 3) -> bool:
        servers = self.servers()
        if "mlflow" not in servers:
            return False
        try:
            return requests.get(f"{servers['mlflow'].url}/health", timeout=timeout).ok
        except requests.RequestException:
            return False

    def _wait(self, server: Server, healthy, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if healthy():
                return
            if not server.running:
                raise StackError(f"{server.name} server exited during start-up; see {server.log}:\n{_tail(Path(server.log))}")
            time.sleep(0.3)
        raise StackError(f"{server.name} server did not become healthy within {timeout:.0f}s at {server.url}; "
                         f"see {server.log}:\n{_tail(Path(server.log))}")

    # ----- lifecycle ---------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], url: str, env: dict[str, str] | None = None) -> Server:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, cwd=self.state_dir)
        start = None
        for _ in range(50):
            start = _start_time(proc.pid)
            if start:
                break
            time.sleep(0.01)
        return Server(name=name, url=url, pid=proc.pid, start_time=start or "", log=str(log_path))

    def up(self, timeout: float = 120) -> dict[str, Server]:
        """Start both servers (or keep them if they are already running and healthy) and write stack.env."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        servers = {n: s for n, s in self.servers().items() if s.running}
        locked = (self.state_dir / "security.toml").exists()  # a stack started before the lock-down restarts
        if set(servers) == {"s3", "mlflow"} and locked and self.s3_healthy() and self.mlflow_healthy():
            log.info("stack already up in %s", self.state_dir)
            return servers
        self.down()
        access, secret = self._credentials()
        *seaweed_ports, mlflow_port = _free_ports(len(SEAWEED_PORTS) + 1)
        ports = dict(zip(SEAWEED_PORTS, seaweed_ports, strict=True))
        (self.state_dir / "s3").mkdir(exist_ok=True)
        security.ensure(self.state_dir)  # read by weed from its working directory, the state folder
        weed = [
            _binary("weed"), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.state_dir / 's3'}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=0", "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.identities_file}",
        ]
        log.info("starting S3 server (SeaweedFS) on 127.0.0.1:%d", ports["s3"])
        weed_env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}  # would override the file
        s3 = self._spawn("s3", weed, f"http://127.0.0.1:{ports['s3']}", env=weed_env)
        self._save({"s3": s3})
        try:
            self._wait(s3, self.s3_healthy, timeout)
            client = s3lib.client(S3Settings(s3.url, access, secret))
            for bucket in (DATA_BUCKET, MLFLOW_BUCKET):
                s3lib.retry(lambda b=bucket: s3lib.ensure_bucket(client, b), what=f"create bucket {bucket}")

            (self.state_dir / "mlflow").mkdir(exist_ok=True)
            server_env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                          "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": s3.url,
                          "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            mlflow_cmd = [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts", "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
            ]
            log.info("starting MLflow tracking server on 127.0.0.1:%d", mlflow_port)
            mlflow_server = self._spawn("mlflow", mlflow_cmd, f"http://127.0.0.1:{mlflow_port}", env=server_env)
            self._save({"s3": s3, "mlflow": mlflow_server})
            self._wait(mlflow_server, self.mlflow_healthy, timeout)
        except BaseException:
            self.down()
            raise
        security.write_private(self.env_file, "".join(f"export {k}={v}\n" for k, v in self.env().items()))
        log.info("stack up: S3 %s, MLflow %s; connection variables in %s", s3.url, mlflow_server.url, self.env_file)
        return self.servers()

    def down(self, grace: float = 40) -> None:
        """Stop every recorded server by PID (its whole process group) and forget it."""
        for server in reversed(list(self.servers().values())):
            _stop_group(server.pid, server.start_time, server.name, grace)
        self.state_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)

    def status(self) -> list[dict[str, object]]:
        """One row per server: name, URL, PID, running, healthy, log."""
        checks = {"s3": self.s3_healthy, "mlflow": self.mlflow_healthy}
        return [{"server": s.name, "url": s.url, "pid": s.pid, "running": s.running,
                 "healthy": s.running and checks[s.name](), "log": s.log} for s in self.servers().values()]

    def apply_env(self, override: bool = False) -> None:
        """Put this stack's connection variables into os.environ (only those not set, unless `override`)."""
        for key, value in self.env().items():
            if override or not os.environ.get(key):
                os.environ[key] = value
