"""`tlpipe compile | upload | run`: build the pipeline YAML and drive a KFP API server with the kfp client.

The server is `--host` (default $KF_PIPELINES_ENDPOINT, as for the kfp CLI). Authentication follows the kfp
client: `--token` (default $KFP_TOKEN) for a bearer token, `--cookies` (default $KFP_COOKIES) for a session
cookie such as `authservice_session=…` behind Dex/oauth2-proxy, `--namespace` for multi-user deployments.
Tokens are read from the environment by default so they do not land in shell history or process lists.
Upload and run first ask the server its version (healthz) and refuse one older than the compiled pipeline
needs (pipelines/backends.py), unless `--force`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from tlpipe.components.common.log import get_logger
from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT

log = get_logger("kfp")
HOST_ENV = "KF_PIPELINES_ENDPOINT"
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


class ParameterError(ValueError):
    """A `-p key=value` that names no pipeline parameter or cannot be parsed."""


class KfpApiError(RuntimeError):
    """The KFP API server answered with an error (other than refused credentials)."""


class RunFailedError(RuntimeError):
    """A watched run ended in a state other than SUCCEEDED (`tlpipe` exits 1)."""

    exit_code = 1


def parse_params(pairs: list[str], known: dict | None = None) -> dict:
    """`["epochs=3", "weights=s3://b/w.keras"]` -> {"epochs": 3, "weights": "s3://b/w.keras"}.

    Values are JSON when they parse as JSON (numbers, true/false, {...}), else strings. With `known`
    (parameter name -> default), an unknown name raises ParameterError naming the close matches.
    """
    params = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"-p {pair}: not key=value, e.g. -p epochs=3")
        if known is not None and key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(sorted(known))}"
            raise ParameterError(f"-p {pair}: unknown pipeline parameter {key!r}; {hint}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        default = (known or {}).get(key)
        if isinstance(default, str) and not isinstance(value, str):
            value = raw  # a string parameter keeps the text as typed (e.g. "1.0" stays "1.0")
        params[key] = value
    return params


def resolve_host(host: str | None) -> str:
    """`host`, else $KF_PIPELINES_ENDPOINT, else a one-line error saying how to name the server."""
    host = host or os.environ.get(HOST_ENV, "").strip()
    if not host:
        raise ValueError(f"no KFP API server: pass --host URL (e.g. --host http://localhost:8080) or set ${HOST_ENV}")
    return host.rstrip("/")


@contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """Turn the kfp client's connection failures and HTTP errors into one-line errors naming `host`."""
    import kfp_server_api
    import urllib3

    from tlpipe.components.common.s3 import connection_reason

    try:
        yield
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        raise ConnectionError(f"KFP API at {host} is unreachable ({connection_reason(exc)}): check --host or "
                              f"${HOST_ENV} and that the server is up") from exc
    except kfp_server_api.ApiException as exc:
        try:
            detail = json.loads(exc.body or "{}")
            detail = detail.get("error") or detail.get("message") or ""
        except (ValueError, AttributeError):
            detail = str(exc.body or "")[:200]
        answer = f"KFP API at {host} answered HTTP {exc.status} {exc.reason}" + (f": {detail}" if detail else "")
        if exc.status in (401, 403):
            raise PermissionError(f"{answer}; check --token ($KFP_TOKEN), --cookies ($KFP_COOKIES) and "
                                  "--namespace") from exc
        raise KfpApiError(answer) from exc


def make_client(host: str, namespace: str | None = None, token: str | None = None, cookies: str | None = None,
                ssl_ca_cert: str | None = None):
    """A kfp.Client for `host` with the given auth (token and cookies default to $KFP_TOKEN/$KFP_COOKIES)."""
    import kfp

    with warnings.catch_warnings():  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow",
                          existing_token=token or os.environ.get("KFP_TOKEN") or None,
                          cookies=cookies or os.environ.get("KFP_COOKIES") or None, ssl_ca_cert=ssl_ca_cert)


def server_version(client) -> str:
    """The KFP backend version the server reports (healthz `tag_name`; kfp's model drops that field)."""
    response = client._healthz_api.healthz_service_get_healthz(_preload_content=False, _request_timeout=30)
    return str(json.loads(response.data or b"{}").get("tag_name") or "unknown")


def check_backend(client, host: str, package: str | Path, force: bool = False) -> None:
    """Refuse a server older than the backend `package` needs (pipelines/backends.py), unless `force`."""
    from tlpipe.pipelines import backends

    required, version = backends.required_backend(package), server_version(client)
    try:
        recent = backends.meets(version, required)
    except ValueError:
        log.warning("KFP backend at %s reports version %r: cannot check it is at least %s, which %s needs",
                    host, version, required, Path(package).name)
        return
    if recent:
        log.info("KFP backend at %s is %s (the pipeline needs %s or newer)", host, version, required)
        return
    targets = [t for t, minimum in backends.TARGETS.items() if backends.meets(version, minimum)]
    fix = (f"compile for it with `tlpipe compile --kfp-backend {max(targets, key=backends.version_tuple)}`"
           if targets else "upgrade the backend")
    message = f"KFP backend at {host} is {version} but {Path(package).name} needs {required} or newer: {fix}"
    if not force:
        raise ValueError(f"{message}, or pass --force")
    log.warning("%s; going on (--force)", message)


def upload(client, package: str | Path, name: str, version: str | None = None,
           description: str | None = None) -> tuple[str, str | None]:
    """Create pipeline `name` from `package`, or add a new version to it if it exists.

    Returns (pipeline_id, pipeline_version_id); the version id is None for a newly created pipeline.
    """
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=name, description=description)
        log.info("created pipeline %s (%s)", name, pipeline.pipeline_id)
        return pipeline.pipeline_id, None
    version = version or time.strftime("v%Y%m%d-%H%M%S", time.gmtime())
    created = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                                             description=description)
    log.info("added version %s (%s) to pipeline %s", version, created.pipeline_version_id, name)
    return pipeline_id, created.pipeline_version_id


def run_url(host: str, run_id: str) -> str:
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def _failed_task(run) -> tuple[str, str]:
    """(name, error message) of the task that failed first, preferring a step over the DAGs around it."""
    tasks = [t for t in ((run.run_details and run.run_details.task_details) or []) if t.state == "FAILED"]
    tasks.sort(key=lambda t: (bool(t.child_tasks), not (t.error and t.error.message), str(t.end_time or "")))
    if tasks:
        return tasks[0].display_name, (tasks[0].error and tasks[0].error.message) or ""
    return "", (run.error and run.error.message) or ""


def watch(client, run_id: str, host: str, interval: float = 10.0) -> None:
    """Print the run's and its tasks' state changes until it ends; RunFailedError unless it SUCCEEDED."""
    seen: dict[str, str] = {}
    while True:
        run = client.get_run(run_id)
        if seen.get("") != run.state:
            print(f"{time.strftime('%H:%M:%S')} run {run.state}", flush=True)
            seen[""] = run.state
        for task in (run.run_details and run.run_details.task_details) or []:
            if task.display_name and seen.get(task.display_name) != task.state:
                print(f"{time.strftime('%H:%M:%S')}   {task.display_name}: {task.state}", flush=True)
                seen[task.display_name] = task.state
        if run.state in FINAL_STATES:
            break
        time.sleep(interval)
    if run.state != "SUCCEEDED":
        name, error = _failed_task(run)
        where = f": task {name!r} failed" if name else ""
        raise RunFailedError(f"run {run_id} ended {run.state}{where}" + (f": {error}" if error else "")
                             + f" (details: {run_url(host, run_id)})")


# ----- command line ---------------------------------------------------------------------------
def _images(args: argparse.Namespace):
    from tlpipe.pipelines.settings import ImageSettings

    return ImageSettings(prefix=args.image_prefix, tag=args.image_tag)


def _resources(args: argparse.Namespace):
    from tlpipe.pipelines.settings import ResourceSettings

    return ResourceSettings(**{f.name: getattr(args, f.name) for f in fields(ResourceSettings)})


def _compile(args: argparse.Namespace, output: str | Path) -> Path:
    from tlpipe.pipelines.compiler import compile_pipeline

    return compile_pipeline(output, _images(args), _resources(args), kfp_backend=args.kfp_backend)


def _cmd_compile(args: argparse.Namespace) -> int:
    from tlpipe.pipelines import backends
    from tlpipe.pipelines.compiler import parameter_defaults
    from tlpipe.pipelines.settings import IMAGE_FAMILIES

    path = _compile(args, args.output)
    print(f"wrote {path} (validated against the pipeline-spec protos; {len(parameter_defaults(path))} parameters; "
          f"needs a KFP backend {backends.required_backend(path)} or newer)")
    images = _images(args)
    print("images: " + ", ".join(images.image(f) for f in IMAGE_FAMILIES if f != "train-gpu" or args.gpu))
    return 0


STEPS = {"preprocess": "the preprocess step", "train": "each training step", "evaluate": "the evaluate step",
         "register": "the register step"}


def _build_args(parser: argparse.ArgumentParser) -> None:
    """Compile-time settings: images (one prefix and tag for all), the steps' resources, the backend target."""
    from tlpipe.pipelines import backends
    from tlpipe.pipelines.settings import ImageSettings, ResourceSettings

    parser.add_argument("--image-prefix", default=ImageSettings.prefix, help="registry prefix of every image")
    parser.add_argument("--image-tag", default=ImageSettings.tag, help="tag of every image")
    for f in fields(ResourceSettings):
        if f.name == "gpu":
            continue
        step, kind = f.name.rsplit("_", 1)
        what = ("CPU of {}, in cores: e.g. 2, 1.5 or 500m" if kind == "cpu"
                else "memory of {}, with a unit: e.g. 16Gi (GiB) or 16G (GB)")
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=what.format(STEPS[step]))
    parser.add_argument("--gpu", action="store_true", help="training steps on the train-gpu image with 1 nvidia.com/gpu")
    parser.add_argument("--kfp-backend", choices=backends.TARGETS, default=backends.DEFAULT_TARGET,
                        help="compile for this KFP backend version or newer (2.5 leaves out the secret fields "
                             "older drivers reject)")


def _auth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help=f"KFP API/UI URL, e.g. http://localhost:8080 (default: ${HOST_ENV})")
    parser.add_argument("--namespace", default=None, help="user namespace (multi-user KFP)")
    parser.add_argument("--token", default=None, help="bearer token (default: $KFP_TOKEN)")
    parser.add_argument("--cookies", default=None, help="auth cookie string (default: $KFP_COOKIES)")
    parser.add_argument("--ssl-ca-cert", default=None, help="CA bundle for a TLS endpoint")
    parser.add_argument("--force", action="store_true",
                        help="go on when the server's KFP version is older than the pipeline needs")


def _client(args: argparse.Namespace):
    """The kfp client of args.host (resolved in place from $KF_PIPELINES_ENDPOINT)."""
    args.host = resolve_host(args.host)
    with kfp_errors(args.host):
        return make_client(args.host, args.namespace, args.token, args.cookies, args.ssl_ca_cert)


def _cmd_upload(args: argparse.Namespace) -> int:
    from tlpipe.pipelines.compiler import validate_pipeline_yaml
    from tlpipe.pipelines.pipeline import PIPELINE_NAME

    if not Path(args.package).is_file():
        raise FileNotFoundError(f"package {args.package}: no such file; write it with `tlpipe compile -o {args.package}`")
    validate_pipeline_yaml(args.package)
    client = _client(args)
    with kfp_errors(args.host):
        check_backend(client, args.host, args.package, args.force)
        pipeline_id, version_id = upload(client, args.package, args.name or PIPELINE_NAME, args.version,
                                         args.description)
    print(f"pipeline id {pipeline_id}" + (f", version id {version_id}" if version_id else " (new pipeline)"))
    print(f"{args.host}/#/pipelines/details/{pipeline_id}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import tempfile

    from tlpipe.pipelines.validation import defaults, validate_parameters

    # None keeps the compiled per-step caching (ingest/training cached, fingerprint/register never);
    # True would make the client switch caching on for every step, register included.
    caching = False if args.no_cache else None
    # Checked before compiling or calling the server; the cluster does not see this machine's files.
    params = validate_parameters(parse_params(args.param, defaults()), check_files=False)
    if args.package and not Path(args.package).is_file():
        raise FileNotFoundError(f"--package {args.package}: no such file; write it with `tlpipe compile -o "
                                f"{args.package}` or leave --package out to compile now")
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or _compile(args, Path(tmp) / "pipeline.yaml")
        client = _client(args)
        run_name = args.run_name or time.strftime("tlpipe-%Y%m%d-%H%M%S", time.gmtime())
        with kfp_errors(args.host):
            check_backend(client, args.host, package, args.force)
            run_id = _start(client, args, package, params, run_name, caching)
    print(f"started run {run_name} ({run_id})")
    print(run_url(args.host, run_id), flush=True)
    if args.watch:
        with kfp_errors(args.host):
            watch(client, run_id, args.host, args.watch_interval)
    return 0


def _start(client, args: argparse.Namespace, package: Path, params: dict, run_name: str, caching) -> str:
    """Start the run (of `package`, or of the latest version of --pipeline-name); returns its id."""
    if args.pipeline_name:
        pipeline_id = client.get_pipeline_id(args.pipeline_name)
        if pipeline_id is None:
            raise ValueError(f"--pipeline-name {args.pipeline_name}: no such pipeline on {args.host}; "
                             "run `tlpipe upload` first")
        versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
        experiment = client.create_experiment(args.experiment, namespace=args.namespace)
        return client.run_pipeline(experiment_id=experiment.experiment_id, job_name=run_name, params=params,
                                   pipeline_id=pipeline_id,
                                   version_id=versions.pipeline_versions[0].pipeline_version_id,
                                   enable_caching=caching).run_id
    return client.create_run_from_pipeline_package(
        str(package), arguments=params, run_name=run_name, experiment_name=args.experiment,
        namespace=args.namespace, enable_caching=caching).run_id


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`tlpipe compile`, `tlpipe upload`, `tlpipe run`."""
    comp = sub.add_parser("compile", help="compile the pipeline to YAML (validated against the pipeline-spec)")
    comp.add_argument("-o", "--output", default="pipeline.yaml", help="output file")
    _build_args(comp)
    comp.set_defaults(func=_cmd_compile)

    up = sub.add_parser("upload", help="upload the pipeline, or a new version of it, to a KFP API server")
    up.add_argument("package", help="compiled pipeline YAML")
    up.add_argument("--name", default=None, help="pipeline name (default: transfer-learning-image-classifier)")
    up.add_argument("--version", default=None, help="version name when the pipeline exists (default: a timestamp)")
    up.add_argument("--description", default=None, help="description of the pipeline or version")
    _auth_args(up)
    up.set_defaults(func=_cmd_upload)

    run = sub.add_parser("run", help="start a pipeline run on a KFP API server and print its dashboard URL")
    _auth_args(run)
    run.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment (created if missing)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="pipeline parameter (repeatable); values are JSON when they parse, else text")
    run.add_argument("--package", default=None, help="compiled YAML to run (default: compile now)")
    run.add_argument("--pipeline-name", default=None, help="run the latest version of this uploaded pipeline instead")
    run.add_argument("--run-name", default=None, help="run name (default: tlpipe-<UTC time>)")
    _build_args(run)
    run.add_argument("--no-cache", action="store_true", help="disable step caching for this run")
    run.add_argument("--watch", action="store_true",
                     help="follow the run to its end, printing state changes; exit 0 if it SUCCEEDED, else 1")
    run.add_argument("--watch-interval", type=float, default=10.0, help="seconds between two looks at the run")
    run.set_defaults(func=_cmd_run)
