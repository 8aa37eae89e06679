"""Create or patch the InferenceService, wait for Ready, surface the predictor's failure, restore on failure.

Through the `kubernetes` client's custom-objects API (merge patch), as preprocess does for its SparkApplication.
"""

from __future__ import annotations

import time

from tlpipe.components.common.log import get_logger
from tlpipe.components.deploy.inference_service import GROUP, PLURAL, VERSION, served

log = get_logger("deploy.k8s")

# Waiting reasons of a predictor container that do not heal by waiting
FATAL_WAITING = ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                 "CreateContainerConfigError")
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


class DeployError(RuntimeError):
    """The InferenceService was refused, its predictor failed, or it did not become Ready in time."""


class DeployTimeoutError(DeployError):
    """The InferenceService did not become Ready within the timeout."""


def read(api_client, namespace: str, name: str) -> dict | None:
    """The InferenceService, or None when there is none."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        return client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise DeployError(f"cannot read InferenceService {namespace}/{name}: {exc.status} {exc.reason}: "
                          f"{exc.body}") from None


def _apply(api_client, body: dict, current: dict | None) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi(api_client)
    meta = body["metadata"]
    try:
        if current is None:
            api.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, body)
        else:  # merge patch: what we own, and no canary unless the body has one
            predictor = {"canaryTrafficPercent": None, **body["spec"]["predictor"]}
            patch = {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
                     "spec": {"predictor": predictor}}
            api.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch)
    except ApiException as exc:
        raise DeployError(f"cannot {'create' if current is None else 'patch'} InferenceService "
                          f"{meta['namespace']}/{meta['name']}: {exc.status} {exc.reason}: {exc.body}") from None


def rollout(api_client, body: dict, timeout_s: float, poll_interval_s: float = 5.0) -> dict:
    """Apply `body` and wait until it is Ready; its status. On failure the previous spec is put back (a new
    service is left as it is, for `kubectl describe`) and DeployError says what the predictor reported."""
    meta = body["metadata"]
    current = read(api_client, meta["namespace"], meta["name"])
    _apply(api_client, body, current)
    champion, canary = served(body)
    log.info("%s InferenceService %s/%s: champion version %s%s", "created" if current is None else "patched",
             meta["namespace"], meta["name"], champion,
             f", canary version {canary} at {body['spec']['predictor']['canaryTrafficPercent']}%" if canary else "")
    try:
        return wait_ready(api_client, meta["namespace"], meta["name"], timeout_s, poll_interval_s)
    except DeployError as exc:
        if current is None:
            raise
        previous = {"metadata": {**meta, "labels": current["metadata"].get("labels") or {},
                                 "annotations": current["metadata"].get("annotations") or {}},
                    "spec": {"predictor": current["spec"]["predictor"]}}
        _apply(api_client, previous, current)
        old = served(current)
        raise DeployError(f"{exc}\nrestored the previous spec of {meta['namespace']}/{meta['name']} (champion "
                          f"version {old[0] or '?'}{', canary ' + old[1] if old[1] else ''})") from None


def _condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def wait_ready(api_client, namespace: str, name: str, timeout_s: float, poll_interval_s: float = 5.0) -> dict:
    """Poll until Ready for the current generation; raise DeployError as soon as the predictor fails."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        obj = read(api_client, namespace, name) or {}
        status = obj.get("status") or {}
        ready = _condition(status, "Ready")
        current = status.get("observedGeneration", 0) >= obj.get("metadata", {}).get("generation", 0)
        state = f"Ready={ready.get('status', 'Unknown')}" + (f" ({ready['reason']})" if ready.get("reason") else "")
        if state != last:
            log.info("InferenceService %s/%s: %s", namespace, name, state)
            last = state
        if current and ready.get("status") == "True":
            log.info("InferenceService %s/%s is Ready at %s", namespace, name, status.get("url", "(no URL)"))
            return status
        failure = _model_failure(status) or _pod_failure(api_client, namespace, name)
        if failure:
            log.error("predictor of %s/%s failed: %s", namespace, name, failure)  # in full (the error is cut)
            raise DeployError(f"InferenceService {namespace}/{name}: the predictor failed: {failure}")
        if time.monotonic() > deadline:
            raise DeployTimeoutError(
                f"InferenceService {namespace}/{name} was not Ready within {timeout_s:g} s (last: {state}"
                f"{': ' + ready['message'] if ready.get('message') else ''}); see `kubectl -n {namespace} "
                f"describe inferenceservice {name}`")
        time.sleep(poll_interval_s)


def _model_failure(status: dict) -> str:
    model = status.get("modelStatus") or {}
    if (model.get("transitionStatus") or "") not in FAILED_TRANSITIONS:
        return ""
    info = model.get("lastFailureInfo") or {}
    return (f"{model['transitionStatus']}: {info.get('reason', '')} {info.get('message', '')}".strip()
            + (f" (exit code {info['exitCode']})" if info.get("exitCode") else ""))


def _pod_failure(api_client, namespace: str, name: str) -> str:
    """The first predictor container stuck in a state that waiting does not cure, with its log tail."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"serving.kserve.io/inferenceservice={name}")
    except ApiException as exc:
        log.warning("cannot list the predictor's pods (%s %s); only the InferenceService's status is read",
                    exc.status, exc.reason)
        return ""
    for pod in pods.items:
        statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
        for cs in statuses:
            waiting = cs.state.waiting if cs.state else None
            if waiting is None or waiting.reason not in FATAL_WAITING:
                continue
            text = f"pod {pod.metadata.name} container {cs.name}: {waiting.reason}"
            text += f": {waiting.message}" if waiting.message else ""
            if waiting.reason == "CrashLoopBackOff":
                try:
                    tail = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=cs.name,
                                                        previous=True, tail_lines=20)
                    text += f"\nlast output of {cs.name}:\n{tail}"
                except ApiException as exc:
                    text += f" (log unavailable: {exc.status} {exc.reason})"
            return text
    return ""
