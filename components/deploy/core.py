"""The deploy step: serve the registry's champion from a KServe InferenceService, the challenger as canary.

The registry is the source of truth: `champion` and `challenger` aliases in, the service patched to match.
A canary goes out only on top of a service already serving the champion at 100 % (KServe keeps the last
fully rolled-out revision for the rest of the traffic).
"""

from __future__ import annotations

from dataclasses import dataclass

from tlpipe.components.common import kube, mlflow_utils
from tlpipe.components.common.log import get_logger
from tlpipe.components.deploy import inference_service as isvc
from tlpipe.components.deploy import k8s
from tlpipe.components.deploy.params import DeployParams

log = get_logger("deploy")
CHAMPION, CHALLENGER = "champion", "challenger"  # the aliases register sets (docs/DESIGN.md §6)
POLL_INTERVAL_S = 5.0


@dataclass(frozen=True)
class DeployResult:
    url: str  # the service's URL ("" when deploy is off)
    champion: str  # the version served to (the rest of) the traffic
    canary: str  # the challenger's version when it goes out as canary, else ""


def _alias(client, name: str, alias: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return ""
        raise


def target(client, registered_model_name: str, params: DeployParams) -> isvc.Target:
    """What the registry says to serve: the champion, and the challenger as canary when it is another version."""
    name = registered_model_name
    champion = _alias(client, name, CHAMPION)
    if not champion:
        raise ValueError(f"registered model {name!r} has no {CHAMPION!r} alias: nothing to deploy")
    uri = isvc.storage_uri(client, name, champion, params.artifacts_destination)
    challenger = _alias(client, name, CHALLENGER)
    if params.canary_traffic_percent and challenger and challenger != champion:
        return isvc.Target(champion, uri, challenger,
                           isvc.storage_uri(client, name, challenger, params.artifacts_destination),
                           params.canary_traffic_percent)
    return isvc.Target(champion, uri)


def deploy(registered_model_name: str, params: DeployParams, api_client=None, mlflow_client=None,
           poll_interval_s: float = POLL_INTERVAL_S) -> DeployResult:
    """Create or patch the InferenceService to serve the registry's champion (and challenger as canary)."""
    params.validate()
    if params.deploy == "off":
        log.info("deploy is off: no InferenceService")
        return DeployResult("", "", "")
    if mlflow_client is None:
        from mlflow.tracking import MlflowClient

        mlflow_utils.connect()
        mlflow_client = MlflowClient()
    api_client = api_client or kube.api_client()
    want = target(mlflow_client, registered_model_name, params)
    current = k8s.read(api_client, params.namespace, params.inference_service)
    status = {}
    if want.canary and (current is None or isvc.served(current) != (want.champion, "")):
        # the champion at 100 % first: the canary's remaining traffic goes to the last rolled-out revision
        status = k8s.rollout(api_client, isvc.build(registered_model_name, isvc.Target(want.champion,
                             want.champion_uri), params), params.ready_timeout_s, poll_interval_s)
    if not status or want.canary:
        status = k8s.rollout(api_client, isvc.build(registered_model_name, want, params), params.ready_timeout_s,
                             poll_interval_s)
    return DeployResult(status.get("url", ""), want.champion, want.canary)


def move_traffic(namespace: str, name: str, registered_model_name: str, version: str, mlflow_client,
                 api_client=None, timeout_s: float = DeployParams.ready_timeout_s,
                 poll_interval_s: float | None = None) -> tuple[str, str]:
    """Serve `version` to all traffic of an existing InferenceService (promote, rollback); its canary ends.

    Keeps the service's runtime, account and mode; returns what it served before (champion, canary).
    Raises DeployError (with the previous spec restored) when the new predictor does not become Ready.
    """
    api_client = api_client or kube.api_client()
    poll_interval_s = POLL_INTERVAL_S if poll_interval_s is None else poll_interval_s
    current = k8s.read(api_client, namespace, name)
    if current is None:
        raise ValueError(f"InferenceService {namespace}/{name} does not exist: run `tlpipe deploy` first")
    annotations = current["metadata"].get("annotations") or {}
    if annotations.get(isvc.MODEL_ANNOTATION) != registered_model_name:
        raise ValueError(f"InferenceService {namespace}/{name} serves registered model "
                         f"{annotations.get(isvc.MODEL_ANNOTATION)!r}, not {registered_model_name!r}")
    before = isvc.served(current)
    if before == (str(version), ""):
        return before
    uri = isvc.storage_uri(mlflow_client, registered_model_name, version,
                           annotations.get(isvc.DESTINATION_ANNOTATION, DeployParams.artifacts_destination))
    predictor = {k: v for k, v in current["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
    predictor["model"] = {**predictor["model"], "storageUri": uri}
    body = {"apiVersion": current["apiVersion"], "kind": current["kind"],
            "metadata": {"name": name, "namespace": namespace, "labels": current["metadata"].get("labels") or {},
                         "annotations": {**annotations, isvc.CHAMPION_ANNOTATION: str(version),
                                         isvc.CANARY_ANNOTATION: ""}},
            "spec": {"predictor": predictor}}
    isvc.validate(body)
    k8s.rollout(api_client, body, timeout_s, poll_interval_s)
    return before
