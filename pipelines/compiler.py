"""Compiling the pipeline to YAML and checking a compiled YAML against the pipeline-spec protos (strict)."""

from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf import json_format
from kfp import compiler
from kfp.pipeline_spec import pipeline_spec_pb2

from tlpipe.pipelines.backends import DEFAULT_TARGET, TARGETS, required_backend
from tlpipe.pipelines.pipeline import PIPELINE_NAME, build_pipeline
from tlpipe.pipelines.settings import ImageSettings, ResourceSettings


def compile_pipeline(output: str | Path, images: ImageSettings | None = None,
                     resources: ResourceSettings | None = None, kfp_backend: str = DEFAULT_TARGET) -> Path:
    """Compile the pipeline for the KFP backends of target `kfp_backend` (pipelines/backends.py) to YAML and
    validate it against the pipeline-spec protos (strict) and the backend minimum its description states."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(images, resources, kfp_backend), str(output))
    validate_pipeline_yaml(output)
    if required_backend(output) != TARGETS[kfp_backend]:
        raise ValueError(f"{output} needs KFP backend {required_backend(output)}, not the {TARGETS[kfp_backend]} "
                         f"that target {kfp_backend} promises in its description")
    return output


def validate_pipeline_yaml(path: str | Path):
    """Parse a compiled pipeline into (PipelineSpec, PlatformSpec), rejecting unknown fields."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    if not docs:
        raise ValueError(f"{path} holds no YAML document")
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    platform = pipeline_spec_pb2.PlatformSpec()
    if len(docs) > 1:
        json_format.ParseDict(docs[1], platform, ignore_unknown_fields=False)
    if spec.pipeline_info.name != PIPELINE_NAME:
        raise ValueError(f"{path}: pipeline name is {spec.pipeline_info.name!r}, expected {PIPELINE_NAME!r}")
    return spec, platform


def parameter_defaults(path: str | Path) -> dict:
    """The pipeline's input parameters and their defaults, from a compiled YAML."""
    spec, _ = validate_pipeline_yaml(path)
    params = json_format.MessageToDict(spec.root.input_definitions)["parameters"]
    return {name: p.get("defaultValue") for name, p in params.items()}

