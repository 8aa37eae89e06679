"""MLflow model-registry operations shared by register and `tlpipe models`: aliases, champion history, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlpipe.components.common.log import get_logger

log = get_logger("registry")

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "tlpipe.champion_history"  # JSON list of the versions that were champion, oldest first
HISTORY_LIMIT = 50
CONTENT_HASH_TAG = "tlpipe.content_hash"


class RegistryPermissionError(PermissionError):
    """The MLflow server refused a registry operation to the identity in the environment."""


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked (unknown model or version, nothing to roll back to)."""


@contextmanager
def registry_errors(action: str, name: str) -> Iterator[None]:
    """Turn MLflow's 401/403 answers into RegistryPermissionError naming the action and the model."""
    try:
        yield
    except MlflowException as exc:
        if exc.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            import mlflow

            raise RegistryPermissionError(
                f"MLflow at {mlflow.get_tracking_uri()} refused to {action} (registered model {name!r}, "
                f"{exc.error_code}); the identity in MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_TOKEN needs "
                f"EDIT (or MANAGE for aliases) permission on it") from exc
        raise


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    """Create registered model `name` unless it exists."""
    with registry_errors("read the registered model", name):
        try:
            client.get_registered_model(name)
            return
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    with registry_errors("create the registered model", name):
        client.create_registered_model(name, description=description)
        log.info("created registered model %s", name)


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version that `alias` points at, or None when the alias is not set."""
    with registry_errors(f"read alias {alias!r}", name):
        try:
            return client.get_model_version_by_alias(name, alias).version
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """Versions that held `champion`, oldest first (kept as a tag on the registered model)."""
    with registry_errors("read the registered model", name):
        tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def move_champion(client: MlflowClient, name: str, version: str, record: bool = True) -> str | None:
    """Point `champion` at `version`; returns the previous champion. Appends to the history unless `record` is False."""
    previous = alias_version(client, name, CHAMPION)
    if previous == str(version):
        return previous
    with registry_errors("check the version", name):
        client.get_model_version(name, str(version))  # clear error for an unknown version before touching aliases
    if record:
        history = champion_history(client, name)
        if previous and (not history or history[-1] != previous):
            history.append(previous)
        history = (history + [str(version)])[-HISTORY_LIMIT:]
        with registry_errors("record the champion history", name):
            client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    with registry_errors(f"set alias {CHAMPION!r}", name):
        client.set_registered_model_alias(name, CHAMPION, str(version))
    log.info("%s: champion %s -> version %s", name, previous or "(none)", version)
    return previous


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Move `champion` back to the version that held it before the current one; returns (from, to)."""
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"registered model {name!r} has no champion to roll back from")
    history = champion_history(client, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"registered model {name!r}: version {current} is the first recorded champion; "
                            f"there is no earlier champion to roll back to (use `tlpipe models promote`)")
    target = history[-1]
    with registry_errors("record the champion history", name):
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    move_champion(client, name, target, record=False)
    return current, target
