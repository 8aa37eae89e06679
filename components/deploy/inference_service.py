"""The one owner of the InferenceService's shape (serving.kserve.io/v1beta1) and of where a version's files are.

The predictor is KServe's `model` spec: modelFormat `mlflow`, the ServingRuntime `runtime` (manifests/kserve:
our train image running `mlflow models serve` on the model folder that KServe's storage initializer downloads to
/mnt/models), `storageUri` = the S3 folder of the registered version's MLmodel. A challenger goes out as
KServe's canary (`canaryTrafficPercent`, Serverless mode). Annotations record what is served, so
`tlpipe models promote/rollback` can move the traffic without being told the runtime again.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlpipe.components.deploy.params import DeployParams

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MODEL_ANNOTATION = "tlpipe.io/registered-model"
CHAMPION_ANNOTATION = "tlpipe.io/champion-version"
CANARY_ANNOTATION = "tlpipe.io/canary-version"
DESTINATION_ANNOTATION = "tlpipe.io/artifacts-destination"
MODEL_FORMAT = "mlflow"


class InvalidInferenceServiceError(ValueError):
    """The InferenceService does not match KServe's published models."""


@dataclass(frozen=True)
class Target:
    """What the service should serve: the champion, and a challenger as canary (or none)."""

    champion: str
    champion_uri: str
    canary: str = ""
    canary_uri: str = ""
    canary_percent: int = 0


def build(registered_model_name: str, target: Target, params: DeployParams) -> dict:
    """The InferenceService serving `target`, validated against KServe's models."""
    canary = bool(target.canary and target.canary_percent)
    predictor = {
        "serviceAccountName": params.service_account,
        "minReplicas": 1,
        "model": {"modelFormat": {"name": MODEL_FORMAT}, "runtime": params.runtime,
                  "storageUri": target.canary_uri if canary else target.champion_uri},
    }
    if canary:
        predictor["canaryTrafficPercent"] = target.canary_percent
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": params.inference_service, "namespace": params.namespace,
            "labels": {"app.kubernetes.io/name": "tlpipe", "app.kubernetes.io/component": "serving"},
            "annotations": {MODE_ANNOTATION: params.deployment_mode, MODEL_ANNOTATION: registered_model_name,
                            CHAMPION_ANNOTATION: target.champion, CANARY_ANNOTATION: target.canary if canary else "",
                            DESTINATION_ANNOTATION: params.artifacts_destination},
        },
        "spec": {"predictor": predictor},
    }
    validate(body)
    return body


def served(body: dict) -> tuple[str, str]:
    """(champion version, canary version or "") that an InferenceService's annotations record."""
    annotations = body.get("metadata", {}).get("annotations") or {}
    return annotations.get(CHAMPION_ANNOTATION, ""), annotations.get(CANARY_ANNOTATION, "")


def validate(body: dict) -> None:
    """Check `body` against the kserve SDK's V1beta1InferenceService: unknown fields, wrong types and missing
    required fields fail, naming the field."""
    errors = model_errors("V1beta1InferenceService", body)
    if errors:
        name = body.get("metadata", {}).get("name")
        raise InvalidInferenceServiceError(f"InferenceService {name}: {'; '.join(errors)}")


def model_errors(kind: str, body: dict) -> list[str]:
    """What in `body` does not fit the SDK model `kind` (e.g. V1alpha1ServingRuntime); [] when it fits."""
    errors: list[str] = []
    _check(kind, body, "", errors)
    return errors


def _kserve_models():
    """kserve.models without running kserve/__init__ (which starts importing the model server's dependencies:
    grpc, fastapi, cloudevents, ...); the generated models need only `six`."""
    import importlib
    import importlib.util
    import sys
    import types

    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        if spec is None:
            raise ImportError("the kserve SDK is not installed (requirements-nodeps.txt: pip install --no-deps)")
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


def _model_class(name: str):
    import kubernetes.client.models as k8s_models

    return getattr(_kserve_models(), name, None) or getattr(k8s_models, name, None)


_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def _check(kind: str, value, path: str, errors: list[str]) -> None:
    if value is None:
        return
    if kind.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path or '.'}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(kind[5:-1], item, f"{path}[{i}]", errors)
        return
    if kind.startswith("dict("):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        for key, item in value.items():
            _check(kind.split(", ", 1)[1][:-1], item, f"{path}.{key}", errors)
        return
    if kind in _PRIMITIVES:
        if not isinstance(value, _PRIMITIVES[kind]) or (kind == "int" and isinstance(value, bool)):
            errors.append(f"{path}: expected {kind}, got {type(value).__name__} {value!r}")
        return
    cls = _model_class(kind)
    if cls is None:  # types the generator left abstract (ResourceQuantity, IntOrString): any scalar
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({kind}), got {type(value).__name__}")
        return
    by_json = {json: attr for attr, json in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: unknown field of {kind}".lstrip("."))
        else:
            _check(cls.openapi_types[by_json[key]], item, f"{path}.{key}".lstrip("."), errors)
    try:  # the generated setters refuse a missing required field and a value outside an enum
        cls(**{by_json[k]: v for k, v in value.items() if k in by_json})
    except ValueError as exc:
        errors.append(f"{path or kind}: {exc}")


def storage_uri(mlflow_client, registered_model_name: str, version: str, artifacts_destination: str) -> str:
    """The s3:// folder holding the version's MLmodel, as KServe's storage initializer downloads it.

    A version whose files the MLflow server proxies (`mlflow-artifacts:/<path>`) lives at
    `<artifacts_destination>/<path>` (the server's --artifacts-destination).
    """
    uri = mlflow_client.get_model_version_download_uri(registered_model_name, str(version)).rstrip("/")
    if uri.startswith("s3://"):
        return uri
    if uri.startswith("mlflow-artifacts:"):
        from urllib.parse import urlparse

        path = urlparse(uri).path.lstrip("/")  # mlflow-artifacts:/<path> or mlflow-artifacts://<host>/<path>
        return f"{artifacts_destination.rstrip('/')}/{path}"
    raise ValueError(f"registered model {registered_model_name!r} version {version} is stored at {uri}, which "
                     f"KServe cannot download: its artifacts must be in S3 (s3:// or proxied mlflow-artifacts:)")
