"""`tlpipe compile | upload | run`: build the pipeline YAML and drive a KFP API server with the kfp client.

Authentication follows the kfp client: `--token` (default $KFP_TOKEN) for a bearer token, `--cookies`
(default $KFP_COOKIES) for a session cookie such as `authservice_session=…` behind Dex/oauth2-proxy,
`--namespace` for multi-user deployments. Tokens are read from the environment by default so they do not
land in shell history or process lists.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tlpipe.components.common.log import get_logger
from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT

log = get_logger("kfp")


class ParameterError(ValueError):
    """A `-p key=value` that names no pipeline parameter or cannot be parsed."""


def parse_params(pairs: list[str], known: dict | None = None) -> dict:
    """`["epochs=3", "weights=s3://b/w.keras"]` -> {"epochs": 3, "weights": "s3://b/w.keras"}.

    Values are JSON when they parse as JSON (numbers, true/false, {...}), else strings. With `known`
    (parameter name -> default), unknown names raise ParameterError listing the valid ones.
    """
    params = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"parameter {pair!r} is not key=value")
        if known is not None and key not in known:
            raise ParameterError(f"unknown pipeline parameter {key!r}; known: {', '.join(sorted(known))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        default = (known or {}).get(key)
        if isinstance(default, str) and not isinstance(value, str):
            value = raw  # a string parameter keeps the text as typed (e.g. "1.0" stays "1.0")
        params[key] = value
    return params


def make_client(host: str, namespace: str | None = None, token: str | None = None, cookies: str | None = None,
                ssl_ca_cert: str | None = None):
    """A kfp.Client for `host` with the given auth (token and cookies default to $KFP_TOKEN/$KFP_COOKIES)."""
    import kfp

    return kfp.Client(host=host, namespace=namespace or "kubeflow",
                      existing_token=token or os.environ.get("KFP_TOKEN") or None,
                      cookies=cookies or os.environ.get("KFP_COOKIES") or None, ssl_ca_cert=ssl_ca_cert)


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


# ----- command line ---------------------------------------------------------------------------
def _images(args: argparse.Namespace):
    from tlpipe.pipelines.settings import ImageSettings

    defaults = ImageSettings()
    return ImageSettings(prefix=args.image_prefix or defaults.prefix, tag=args.image_tag or defaults.tag)


def _resources(args: argparse.Namespace):
    from tlpipe.pipelines.settings import ResourceSettings

    return ResourceSettings(preprocess_cpu=args.preprocess_cpu, preprocess_memory=args.preprocess_memory,
                            train_cpu=args.train_cpu, train_memory=args.train_memory, gpu=args.gpu)


def _cmd_compile(args: argparse.Namespace) -> int:
    from tlpipe.pipelines.compiler import compile_pipeline, parameter_defaults
    from tlpipe.pipelines.settings import IMAGE_FAMILIES

    images = _images(args)
    path = compile_pipeline(args.output, images, _resources(args))
    print(f"wrote {path} (validated against the pipeline-spec protos; {len(parameter_defaults(path))} parameters)")
    print("images: " + ", ".join(images.image(f) for f in IMAGE_FAMILIES if f != "train-gpu" or args.gpu))
    return 0


def _build_args(parser: argparse.ArgumentParser) -> None:
    """Compile-time settings: images (one prefix and tag for all) and the heavy steps' resources."""
    from tlpipe.pipelines.settings import ResourceSettings

    defaults = ResourceSettings()
    parser.add_argument("--image-prefix", default=None, help="registry prefix of every image (default tlpipe)")
    parser.add_argument("--image-tag", default=None, help="tag of every image (default: the project version)")
    parser.add_argument("--preprocess-cpu", default=defaults.preprocess_cpu, help="CPU of the preprocess step")
    parser.add_argument("--preprocess-memory", default=defaults.preprocess_memory, help="memory of the preprocess step")
    parser.add_argument("--train-cpu", default=defaults.train_cpu, help="CPU of each training step")
    parser.add_argument("--train-memory", default=defaults.train_memory, help="memory of each training step")
    parser.add_argument("--gpu", action="store_true", help="training steps on the train-gpu image with 1 nvidia.com/gpu")


def _auth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True, help="KFP API/UI URL, e.g. http://localhost:8080")
    parser.add_argument("--namespace", default=None, help="user namespace (multi-user KFP)")
    parser.add_argument("--token", default=None, help="bearer token (default: $KFP_TOKEN)")
    parser.add_argument("--cookies", default=None, help="auth cookie string (default: $KFP_COOKIES)")
    parser.add_argument("--ssl-ca-cert", default=None, help="CA bundle for a TLS endpoint")


def _client(args: argparse.Namespace):
    return make_client(args.host, args.namespace, args.token, args.cookies, args.ssl_ca_cert)


def _cmd_upload(args: argparse.Namespace) -> int:
    from tlpipe.pipelines.compiler import validate_pipeline_yaml
    from tlpipe.pipelines.pipeline import PIPELINE_NAME

    validate_pipeline_yaml(args.package)
    pipeline_id, version_id = upload(_client(args), args.package, args.name or PIPELINE_NAME, args.version,
                                     args.description)
    print(f"pipeline id {pipeline_id}" + (f", version id {version_id}" if version_id else " (new pipeline)"))
    print(f"{args.host.rstrip('/')}/#/pipelines/details/{pipeline_id}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import tempfile

    from tlpipe.pipelines.compiler import compile_pipeline, parameter_defaults

    # None keeps the compiled per-step caching (ingest/training cached, fingerprint/register never);
    # True would make the client switch caching on for every step, register included.
    caching = False if args.no_cache else None
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or compile_pipeline(Path(tmp) / "pipeline.yaml", _images(args), _resources(args))
        params = parse_params(args.param, parameter_defaults(package))
        client = _client(args)
        run_name = args.run_name or time.strftime("tlpipe-%Y%m%d-%H%M%S", time.gmtime())
        if args.pipeline_name:
            pipeline_id = client.get_pipeline_id(args.pipeline_name)
            if pipeline_id is None:
                raise SystemExit(f"no pipeline named {args.pipeline_name!r} on {args.host}; run `tlpipe upload` first")
            versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
            experiment = client.create_experiment(args.experiment, namespace=args.namespace)
            run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=run_name, params=params,
                                      pipeline_id=pipeline_id,
                                      version_id=versions.pipeline_versions[0].pipeline_version_id,
                                      enable_caching=caching)
            run_id = run.run_id
        else:
            result = client.create_run_from_pipeline_package(
                str(package), arguments=params, run_name=run_name, experiment_name=args.experiment,
                namespace=args.namespace, enable_caching=caching)
            run_id = result.run_id
    print(f"started run {run_name} ({run_id})")
    print(run_url(args.host, run_id))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`tlpipe compile`, `tlpipe upload`, `tlpipe run`."""
    comp = sub.add_parser("compile", help="compile the pipeline to YAML (validated against the pipeline-spec)")
    comp.add_argument("-o", "--output", default="pipeline.yaml", help="output file (default pipeline.yaml)")
    _build_args(comp)
    comp.set_defaults(func=_cmd_compile)

    up = sub.add_parser("upload", help="upload the pipeline, or a new version of it, to a KFP API server")
    up.add_argument("package", help="compiled pipeline YAML")
    up.add_argument("--name", default=None, help="pipeline name (default transfer-learning-image-classifier)")
    up.add_argument("--version", default=None, help="version name when the pipeline exists (default: a timestamp)")
    up.add_argument("--description", default=None)
    _auth_args(up)
    up.set_defaults(func=_cmd_upload)

    run = sub.add_parser("run", help="start a pipeline run on a KFP API server and print its dashboard URL")
    _auth_args(run)
    run.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment (created if missing)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="pipeline parameter (repeatable); values are JSON when they parse, else text")
    run.add_argument("--package", default=None, help="compiled YAML to run (default: compile now)")
    run.add_argument("--pipeline-name", default=None, help="run the latest version of this uploaded pipeline instead")
    run.add_argument("--run-name", default=None)
    _build_args(run)
    run.add_argument("--no-cache", action="store_true", help="disable step caching for this run")
    run.set_defaults(func=_cmd_run)
