"""The CLI's one error path: user errors print one line naming the thing, exit 2, and no traceback."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tlpipe.cli.main import build_parser, main
from tlpipe.components.common.settings import S3Settings

REPO = Path(__file__).resolve().parents[2]
GOLDEN = str(REPO / "tests" / "pipeline" / "golden" / "pipeline.yaml")  # what `tlpipe compile` wrote


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tlpipe: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_bare_number_memory_is_refused_with_the_flag_and_a_unit(tmp_path, capsys):
    assert main(["compile", "-o", str(tmp_path / "p.yaml"), "--train-memory", "16"]) == 2
    assert one_error_line(capsys) == "tlpipe: error: --train-memory 16: memory needs a unit, e.g. 16Gi or 16G"
    assert not (tmp_path / "p.yaml").exists()
    assert main(["compile", "-o", str(tmp_path / "p.yaml"), "--evaluate-cpu", "two"]) == 2
    assert "--evaluate-cpu 'two'" in one_error_line(capsys)


def test_debug_flag_and_variable_show_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--train-memory 16: memory needs a unit"):
        main(["--debug", "compile", "-o", str(tmp_path / "p.yaml"), "--train-memory", "16"])
    monkeypatch.setenv("TLPIPE_DEBUG", "1")
    with pytest.raises(ValueError, match="--register-memory 4: memory needs a unit"):
        main(["compile", "-o", str(tmp_path / "p.yaml"), "--register-memory", "4"])


def test_an_unexpected_error_names_its_type_and_the_debug_flag(monkeypatch, tmp_path, capsys):
    from tlpipe.pipelines import compiler

    def broken(*args, **kwargs):
        raise KeyError("executors")

    monkeypatch.setattr(compiler, "compile_pipeline", broken)
    assert main(["compile", "-o", str(tmp_path / "p.yaml")]) == 1
    assert one_error_line(capsys) == ("tlpipe: error: KeyError: 'executors' (run with --debug for the traceback)")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compiler, "compile_pipeline", interrupted)
    assert main(["compile", "-o", str(tmp_path / "p.yaml")]) == 130
    assert capsys.readouterr().err == ""


def test_s3_endpoint_down_names_the_endpoint(tmp_path, monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"
    for key, value in {"S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "a.png").write_bytes(b"x")
    assert main(["data", "upload", str(tmp_path / "data"), "s3://tlpipe/ds"]) == 2
    line = one_error_line(capsys)
    assert f"S3 at {endpoint} is unreachable" in line and "'tlpipe'" in line and "Connection refused" in line


def test_a_wrong_s3_secret_names_the_bucket_and_the_variable(stack, bucket, tmp_path, monkeypatch, capsys):
    secret = S3Settings.from_env().secret_key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "a.png").write_bytes(b"x")
    assert main(["data", "upload", str(tmp_path / "data"), f"s3://{bucket}/ds"]) == 2
    line = one_error_line(capsys)
    assert f"refused bucket '{bucket}'" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert secret not in line and "not-the-secret" not in line


def test_unreachable_host_is_one_line_in_a_real_process(tmp_path):
    host = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "tlpipe.cli.main", "run", "--host", host, "--package", GOLDEN],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"tlpipe: error: KFP API at {host} is unreachable (Failed to establish a new connection: [Errno 111] "
        "Connection refused): check --host or $KF_PIPELINES_ENDPOINT and that the server is up")


def test_no_host_at_all_says_how_to_name_one(monkeypatch, capsys):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["upload", GOLDEN]) == 2
    assert "pass --host URL" in one_error_line(capsys)


def _options_whose_default_help_hides(parser, command="tlpipe"):
    """(command, option) of every option with a default but no help text: argparse shows no default for them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_whose_default_help_hides(sub, f"{command} {name}")
        elif action.option_strings and action.default not in (None, False, True, argparse.SUPPRESS) \
                and not action.help:
            yield command, action.option_strings[-1]


def test_every_option_with_a_default_shows_it_in_help():
    assert list(_options_whose_default_help_hides(build_parser())) == []


def test_help_shows_defaults_in_every_parser(capsys):
    for argv, shown in ((["compile"], "(default: 16G)"), (["run"], "(default: $KF_PIPELINES_ENDPOINT)"),
                        (["stack", "up"], "(default: 120)"), (["ingest"], "(default: 0.05)"),
                        (["data", "upload"], "(default: 16)"), (["train", "frozen"], "(default: 1.0)")):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert shown in " ".join(capsys.readouterr().out.split()), argv
