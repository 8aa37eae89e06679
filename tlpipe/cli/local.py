"""`tlpipe local`: run the whole pipeline on this machine with kfp.local (no Docker, no cluster).

Steps run as subprocesses of this Python (`SubprocessRunner(use_venv=False)`), talk to the S3 and MLflow
named by the environment (the embedded stack is started when they are not set), and keep their artifacts
under a local pipeline root (kfp.local treats an `s3://` root as a local folder, so it must be local).
Caching is on: a second identical run reuses every cached step, and register (idempotent) adds no version.
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


def use_kfp_local_oneof_artifacts() -> None:
    """Let kfp.local resolve `dsl.OneOf` over *artifacts* (kfp 2.17 resolves it only for parameters).

    The pipeline feeds the fine-tuned/scratch model or a skipped-stage placeholder into evaluate with
    dsl.If/dsl.Else + dsl.OneOf, which the KFP backend resolves (kubeflow/pipelines#13437); kfp.local 2.17
    raises "Expected 1 artifact in ArtifactSelectorSpec". This applies kfp.local's own parameter rule
    (take the one branch that produced an output) to artifacts. tests/pipeline checks it is still needed.
    """
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    original = OrchestratorUtils.get_dag_output_artifacts.__func__
    if getattr(original, "_tlpipe_oneof", False):
        return

    def get_dag_output_artifacts(cls, dag_outputs_spec, io_store):
        single_selector = type(dag_outputs_spec)()
        outputs = {}
        for key, spec in dag_outputs_spec.artifacts.items():
            if len(spec.artifact_selectors) == 1:
                single_selector.artifacts[key].CopyFrom(spec)
                continue
            produced = []
            for selector in spec.artifact_selectors:
                try:
                    produced.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
                except (KeyError, ValueError):  # that branch did not run
                    continue
            if len(produced) != 1:
                raise ValueError(f"dsl.OneOf output {key!r}: {len(produced)} branches produced it, expected one")
            outputs[key] = produced[0]
        outputs.update(original(cls, single_selector, io_store))
        return outputs

    get_dag_output_artifacts._tlpipe_oneof = True
    OrchestratorUtils.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)


def ensure_connections(state_dir: str | None = None) -> None:
    """Use the S3/MLflow of the environment; when unset, start (or reuse) the embedded stack and use it."""
    if all(os.environ.get(k) for k in (*S3_ENV_VARS, "MLFLOW_TRACKING_URI")):
        log.info("using S3 %s and MLflow %s from the environment", os.environ["S3_ENDPOINT_URL"],
                 os.environ["MLFLOW_TRACKING_URI"])
        return
    stack = Stack(state_dir)
    stack.up()
    stack.apply_env()


def resolve_data(data: str) -> str:
    """An s3:// URI as is; a local class folder is uploaded (resumably) to s3://tlpipe/datasets/<name>/."""
    if s3lib.is_s3_uri(data):
        return data
    folder = Path(data)
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {data!r} is neither an s3:// URI nor a folder")
    from tlpipe.components.ingest.upload import upload_folder

    uri = f"s3://{os.environ.get('TLPIPE_DATA_BUCKET', DATA_BUCKET)}/datasets/{folder.resolve().name}"
    upload_folder(folder, uri)
    return uri


def run_local(data_uri: str, params: dict, pipeline_root: str | Path, cache: bool = True) -> dict:
    """Run the pipeline with kfp.local; returns the pipeline's outputs (see tlpipe.pipelines.pipeline)."""
    from kfp import local

    from tlpipe.pipelines.pipeline import build_pipeline

    use_kfp_local_oneof_artifacts()
    os.environ["KFP_RUN_ID"] = f"local-{uuid.uuid4().hex[:12]}"
    pipeline_root = Path(pipeline_root).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               enable_caching=cache)
    log.info("pipeline run %s: data %s, artifacts under %s", os.environ["KFP_RUN_ID"], data_uri, pipeline_root)
    task = build_pipeline()(data_uri=data_uri, **params)
    return dict(task.outputs)


STAGES = ("frozen", "finetuned", "scratch")
COLUMNS = {"accuracy": "accuracy", "top_k_accuracy": "top-k acc", "macro_f1": "macro F1", "log_loss": "log loss",
           "ece": "ECE", "latency_ms_b1": "ms/image (b=1)"}


def print_summary(outputs: dict, registered_model_name: str) -> None:
    """The comparison table (frozen vs fine-tuned vs scratch), the choice, and where the model is registered."""
    scalars = dict(outputs["metrics"].metadata)
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
    from tlpipe.pipelines.pipeline import pipeline_parameters

    defaults = pipeline_parameters()
    params = parse_params(args.param, defaults)
    ensure_connections(args.state_dir)
    outputs = run_local(resolve_data(args.data), params, args.pipeline_root, cache=not args.no_cache)
    print_summary(outputs, params.get("registered_model_name", defaults["registered_model_name"]))
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
