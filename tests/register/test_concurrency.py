"""The registry lock against the real embedded MLflow: concurrent promotes and registers in real processes,
a killed holder's stale lock taken over, a live holder making a waiter give up with a clear line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# Each child imports its libraries first, says it is ready, then waits for the others: the calls overlap.
_CHILD = """
import sys, time, pathlib
{prelude}
pathlib.Path(sys.argv[1]).touch()
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.01)
{body}
"""
_CLI = _CHILD.format(prelude="import mlflow.tracking\nfrom tlpipe.cli.main import main\n"
                             "from tlpipe.components.register import registry",
                     body="sys.exit(main(sys.argv[3:]))")
_REGISTER = _CHILD.format(prelude="import dataclasses, json\nfrom tlpipe.components.register import core",
                          body="print(json.dumps(dataclasses.asdict(core.register(**json.loads(sys.argv[3])))))")


def _run_together(tmp_path: Path, script: str, argvs: list[list[str]], timeout: float = 420):
    """Start one process per argv, release them at once; [(returncode, stdout, stderr)]."""
    go = tmp_path / f"go-{uuid.uuid4().hex[:6]}"
    ready = [tmp_path / f"ready-{uuid.uuid4().hex[:6]}" for _ in argvs]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(ready[i]), str(go), *argv], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i, argv in enumerate(argvs)]
    try:
        deadline = time.monotonic() + timeout
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "the child processes did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
        return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def model_with_versions(stack):
    """A registered model with versions 1-4 (no artifacts: promotion only moves aliases), champion v1."""
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils
    from tlpipe.components.register import registry

    mlflow_utils.connect()
    client = MlflowClient()
    name = f"fish-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for _ in range(4):
        client.create_model_version(name, source="s3://mlflow/no-model-needed", await_creation_for=0)
    registry.promote(client, name, "1")
    return client, name


def _live_tickets(client, name: str) -> list:
    from tlpipe.components.register import registry

    return client.search_model_versions(f"name = '{name}{registry.LOCK_SUFFIX}'")


@pytest.mark.timeout(600)
def test_concurrent_promotes_all_land_in_history_and_alias_matches(tmp_path, model_with_versions, capsys):
    from tlpipe.cli.main import main
    from tlpipe.components.register import registry

    client, name = model_with_versions
    results = _run_together(tmp_path, _CLI, [["models", "promote", name, v] for v in ("2", "3", "4")])
    moves = {}
    for rc, out, err in results:
        assert rc == 0, err
        previous, new = re.fullmatch(rf"{name}: champion v(\d+) -> v(\d+)\n", out).groups()
        moves[new] = previous
    history = registry.champion_history(client, name)
    assert history[0] == "1" and sorted(history[1:]) == ["2", "3", "4"]  # every reported success is recorded
    assert {new: history[history.index(new) - 1] for new in moves} == moves  # each saw the one before it
    assert registry.alias_version(client, name, registry.CHAMPION) == history[-1]
    assert _live_tickets(client, name) == []  # every lock was released

    assert main(["models", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert name in listed and f"{name}{registry.LOCK_SUFFIX}" not in listed
    assert main(["models", "rollback", name]) == 0
    assert registry.alias_version(client, name, registry.CHAMPION) == history[-2]


@pytest.mark.timeout(900)
def test_concurrent_registers_of_one_model_create_one_version(stack, tmp_path, model_factory, trained,
                                                             session_examples, manifest_dir):
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common.examples import read_schema
    from tlpipe.components.register import registry

    name = f"fish-{uuid.uuid4().hex[:8]}"
    folder = model_factory.save_artifact(trained[0], tmp_path / "model", read_schema(session_examples)["classes"])
    args = [[json.dumps({"best_model_dir": str(folder), "examples_dir": str(session_examples),
                         "manifest_dir": str(manifest_dir), "registered_model_name": name,
                         "kfp_run_id": f"run-{run}", "tflite_latency_repeats": 2})] for run in ("a", "b")]
    results = _run_together(tmp_path, _REGISTER, args, timeout=800)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    answers = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == ["1"]
    assert {a["model_version"] for a in answers} == {"1"}
    assert sorted(a["reused_version"] for a in answers) == [False, True]
    assert all(a["promoted"] for a in answers)
    assert registry.champion_history(client, name) == ["1"]
    assert registry.alias_version(client, name, registry.CHAMPION) == "1"
    assert _live_tickets(client, name) == []


_HOLDER = """
import sys, time
from mlflow.tracking import MlflowClient
from tlpipe.components.register import registry
with registry.locked(MlflowClient(), sys.argv[1], "test holder", ttl=2):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(300)
def test_stale_lock_of_a_killed_process_is_taken_over(model_with_versions):
    from tlpipe.components.register import registry

    client, name = model_with_versions
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, name], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no release, no more heartbeats
        holder.wait()
    assert len(_live_tickets(client, name)) == 1
    started = time.monotonic()
    promote = subprocess.run([sys.executable, "-m", "tlpipe.cli.main", "models", "promote", name, "2",
                              "--lock-timeout", "60"], capture_output=True, text=True, timeout=120)
    assert promote.returncode == 0, promote.stderr
    assert f"{name}: taking over the lock from 'test holder' by {socket.gethostname()} pid {holder.pid}, " \
           f"stale (no heartbeat for" in promote.stderr
    assert time.monotonic() - started < 50  # took over after the holder's 2 s TTL, not after the timeout
    assert registry.alias_version(client, name, registry.CHAMPION) == "2"
    assert registry.champion_history(client, name) == ["1", "2"]
    assert _live_tickets(client, name) == []


@pytest.mark.timeout(300)
def test_live_holder_makes_a_waiter_give_up_with_one_line_naming_the_model(model_with_versions):
    from tlpipe.components.register import registry

    client, name = model_with_versions
    with registry.locked(client, name, "test holder", ttl=3):  # heartbeats keep it fresh past its TTL
        promote = subprocess.run([sys.executable, "-m", "tlpipe.cli.main", "models", "promote", name, "2",
                                  "--lock-timeout", "8"], capture_output=True, text=True, timeout=120)
        [ticket] = _live_tickets(client, name)  # the waiter removed its own ticket
    assert promote.returncode == 1
    errors = [line for line in promote.stderr.splitlines() if line.startswith("tlpipe models promote:")]
    assert errors == [f"tlpipe models promote: registered model {name!r} is busy: 'test holder' by "
                      f"{socket.gethostname()} pid {os.getpid()} holds its lock (version {ticket.version} of "
                      f"'{name}.lock'); gave up waiting after 8 s"]
    assert "taking over" not in promote.stderr
    assert registry.alias_version(client, name, registry.CHAMPION) == "1"
    assert registry.champion_history(client, name) == ["1"]
    assert _live_tickets(client, name) == []
