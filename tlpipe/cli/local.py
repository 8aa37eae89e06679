"""`tlpipe local`: run the whole pipeline on this machine with kfp.local (no Docker, no cluster).

The parameters (`-p`) and `--data` are checked first (pipelines/validation.py), before any server starts or
anything is uploaded. The pipeline is then compiled to `<pipeline root>/pipeline.yaml`, the very file
`tlpipe upload` sends to a cluster, and that YAML runs: its steps as subprocesses of this Python
(`SubprocessRunner(use_venv=False)`), against the S3 and MLflow named by the environment (the embedded stack
is started when they are not set), with their artifacts under the local pipeline root (kfp.local treats an
`s3://` root as a local folder, so it must be local). Caching is on: a second identical run reuses every
cached step, and register (idempotent) adds no version.
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.settings import S3_ENV_VARS
from tlpipe.stack import DATA_BUCKET, Stack

log = get_logger("local")


def ensure_connections(state_dir: str | None = None) -> None:
    """Use the S3/MLflow of the environment; when unset, start (or reuse) the embedded stack and use it."""
    if all(os.environ.get(k) for k in (*S3_ENV_VARS, "MLFLOW_TRACKING_URI")):
        log.info("using S3 %s and MLflow %s from the environment", os.environ["S3_ENDPOINT_URL"],
                 os.environ["MLFLOW_TRACKING_URI"])
        return
    stack = Stack(state_dir)
    stack.up()
    stack.apply_env()


def check_data(data: str) -> None:
    """--data is an s3://bucket/prefix URI or an existing folder, else a one-line error (nothing started yet)."""
    if s3lib.is_s3_uri(data):
        try:
            s3lib.split_uri(data)
        except ValueError as exc:
            raise ValueError(f"--data {data}: {exc}") from None
    elif not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder; give a folder with one sub-folder per class, "
                                "or an s3://bucket/prefix URI")


def resolve_data(data: str) -> str:
    """An s3:// URI as is; a local class folder is uploaded (resumably) to s3://tlpipe/datasets/<name>/."""
    check_data(data)
    if s3lib.is_s3_uri(data):
        return data
    folder = Path(data)
    from tlpipe.components.ingest.upload import upload_folder

    uri = f"s3://{os.environ.get('TLPIPE_DATA_BUCKET', DATA_BUCKET)}/datasets/{folder.resolve().name}"
    upload_folder(folder, uri)
    return uri


def run_local(data_uri: str, params: dict, pipeline_root: str | Path, cache: bool = True) -> dict:
    """Compile the pipeline to `<pipeline_root>/pipeline.yaml` and run that YAML with kfp.local; returns the
    pipeline's outputs (see tlpipe.pipelines.pipeline)."""
    from kfp import components, local

    from tlpipe.pipelines.compiler import compile_pipeline

    os.environ["KFP_RUN_ID"] = f"local-{uuid.uuid4().hex[:12]}"
    pipeline_root = Path(pipeline_root).resolve()
    package = compile_pipeline(pipeline_root / "pipeline.yaml")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               enable_caching=cache)
    log.info("pipeline run %s of %s: data %s, artifacts under %s", os.environ["KFP_RUN_ID"], package, data_uri,
             pipeline_root)
    task = components.load_component_from_file(str(package))(data_uri=data_uri, **params)
    return dict(task.outputs)


STAGES = ("frozen", "finetuned", "scratch")
COLUMNS = {"accuracy": "accuracy", "top_k_accuracy": "top-k acc", "macro_f1": "macro F1", "log_loss": "log loss",
           "ece": "ECE", "latency_ms_b1": "ms/image (b=1)"}


def print_summary(outputs: dict, registered_model_name: str) -> None:
    """The tune step's choice, the comparison table (frozen vs fine-tuned vs scratch), the chosen stage, and
    where the model is registered."""
    scalars = dict(outputs["metrics"].metadata)
    print(f"\n{outputs['tune_choice']}")
    print(f"\n{'stage':<10}" + "".join(f"{title:>16}" for title in COLUMNS.values()))
    for stage in STAGES:
        if f"{stage}_accuracy" not in scalars:
            print(f"{stage:<10}{'(skipped)':>16}")
            continue
        print(f"{stage:<10}" + "".join(f"{scalars.get(f'{stage}_{key}', float('nan')):>16.3f}" for key in COLUMNS))
    if "transfer_minus_scratch" in scalars:
        print(f"transfer - scratch accuracy: {scalars['transfer_minus_scratch']:+.3f} (95% bootstrap interval "
              f"{scalars['transfer_minus_scratch_ci_low']:+.3f} .. {scalars['transfer_minus_scratch_ci_high']:+.3f})")
    print(f"\nbest stage: {outputs['best_stage']}; report: {outputs['report'].path}")
    version = outputs["model_version"]
    alias = "champion" if outputs["promoted"] else "challenger"
    print(f"registered: models:/{registered_model_name}/{version} (alias @{alias}); {outputs['decision']}")
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking.startswith("http"):
        print(f"MLflow UI: {tracking}/#/models/{registered_model_name}/versions/{version}")


def _cmd_local(args: argparse.Namespace) -> int:
    from tlpipe.cli.remote import parse_params
    from tlpipe.pipelines.validation import defaults, validate_parameters

    params = parse_params(args.param, defaults())
    if "data_uri" in params:
        raise ValueError("-p data_uri: `tlpipe local` takes the data from --data")
    params = validate_parameters(params)
    check_data(args.data)
    ensure_connections(args.state_dir)
    outputs = run_local(resolve_data(args.data), params, args.pipeline_root, cache=not args.no_cache)
    print_summary(outputs, params.get("registered_model_name", defaults()["registered_model_name"]))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`tlpipe local`."""
    parser = sub.add_parser("local", help="run the whole pipeline locally with kfp.local (no Docker)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="s3://bucket/prefix/ or a local class folder (uploaded)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline parameter (repeatable), e.g. -p epochs=3 -p image_size=128")
    parser.add_argument("--pipeline-root", default=".tlpipe/kfp", help="local artifact folder (default .tlpipe/kfp)")
    parser.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    parser.add_argument("--state-dir", default=None, help="embedded stack state folder (default ./.tlpipe)")
    parser.set_defaults(func=_cmd_local)
