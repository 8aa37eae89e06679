"""Which Kubeflow Pipelines backend a compiled pipeline needs, and the compile targets for older ones.

A KFP driver parses each task's Kubernetes config strictly: a field its proto does not know fails the task
("unknown field "optional" in kfp_kubernetes.SecretAsEnv", kubeflow/pipelines#12495; "secretNameParameter",
#11935). kfp-kubernetes 2.x writes `secretAsEnv.optional` (in the backend's proto from 2.15.0) and
`secretNameParameter` beside the deprecated `secretName`, which every driver still reads when the parameter
is absent. Target 2.5 keeps only `keyToEnv` and `secretName`. `fieldPathAsEnv` (kubeflow/pipelines#10496) is
older than both targets. An artifact `dsl.OneOf` would need 2.17.0 (#13437); the pipeline uses none.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# compile target -> the oldest KFP backend that runs what that target compiles
TARGETS = {"2.15": "2.15.0", "2.5": "2.5.0"}
DEFAULT_TARGET = "2.15"
ONEOF_ARTIFACTS_BACKEND = "2.17.0"
# secretAsEnv fields that drivers older than TARGETS[DEFAULT_TARGET] reject
NEWER_SECRET_FIELDS = ("optional", "secretNameParameter")


def check_target(target: str) -> str:
    """`target` if it is a compile target, else a one-line ValueError naming the choices."""
    if target not in TARGETS:
        raise ValueError(f"--kfp-backend {target!r} is not a compile target; choose one of {', '.join(TARGETS)}")
    return target


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.15.0' (or 'v2.15.0', '2.15.0-rc.1') -> (2, 15, 0), for comparing backend versions."""
    core = version.strip().lstrip("v").split("-")[0].split("+")[0]
    try:
        return tuple(int(part) for part in core.split("."))
    except ValueError:
        raise ValueError(f"{version!r} is not a version like 2.15.0") from None


def meets(server_version: str, minimum: str) -> bool:
    """True when a backend of `server_version` is at least `minimum`."""
    return version_tuple(server_version) >= version_tuple(minimum)


def for_target(kubernetes_config: dict, target: str) -> dict:
    """A task's kfp-kubernetes config as the drivers of `target` accept it (fields they reject removed)."""
    if TARGETS[check_target(target)] == TARGETS[DEFAULT_TARGET]:
        return kubernetes_config
    for secret in kubernetes_config.get("secretAsEnv", []):
        for field in NEWER_SECRET_FIELDS:
            secret.pop(field, None)
    return kubernetes_config


def required_backend(yaml_path: str | Path) -> str:
    """The oldest KFP backend version that runs the compiled pipeline at `yaml_path`, read from what it uses."""
    docs = [d for d in yaml.safe_load_all(Path(yaml_path).read_text()) if d]
    if not docs:
        raise ValueError(f"{yaml_path} holds no YAML document")
    if _oneof_artifacts(docs[0]):
        return ONEOF_ARTIFACTS_BACKEND
    platform = docs[1] if len(docs) > 1 else {}
    executors = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    newer = any(field in secret for config in executors.values() for secret in config.get("secretAsEnv", [])
                for field in NEWER_SECRET_FIELDS)
    return TARGETS[DEFAULT_TARGET] if newer else min(TARGETS.values(), key=version_tuple)


def _oneof_artifacts(spec: dict) -> bool:
    """Whether a DAG output selects among several artifacts (dsl.OneOf over artifacts)."""
    dags = [spec.get("root", {})] + list(spec.get("components", {}).values())
    return any(len(output.get("artifactSelectors", [])) > 1 for dag in dags
               for output in dag.get("dag", {}).get("outputs", {}).get("artifacts", {}).values())
