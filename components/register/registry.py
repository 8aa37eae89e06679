"""MLflow model-registry operations shared by register and `tlpipe models`: aliases, champion history, the
registry lock, errors."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
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
LOCK_SUFFIX = ".lock"  # `<name>.lock`: the registered model whose versions are the lock tickets of `<name>`
LOCK_FOR_TAG = "tlpipe.lock_for"  # on the lock model: the model it guards (`tlpipe models list` hides it)
LOCK_OWNER_TAG = "tlpipe.lock_owner"  # on a ticket: action, host and pid of the process waiting or holding
LOCK_TTL_TAG = "tlpipe.lock_ttl_s"  # on a ticket: seconds without a heartbeat after which it is stale
LOCK_TIMEOUT_S = 600.0
LOCK_TTL_S = 30.0


class RegistryPermissionError(PermissionError):
    """The MLflow server refused a registry operation to the identity in the environment."""


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked (unknown model or version, nothing to roll back to)."""


class RegistryLockTimeout(RegistryError):
    """Another process held the registry lock of a model for longer than the caller would wait."""


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
        try:
            client.create_registered_model(name, description=description)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # a concurrent register created it first
                raise
        else:
            log.info("created registered model %s", name)


def is_lock_model(model) -> bool:
    """Whether a registered model is the lock of another one (not a model to list)."""
    return LOCK_FOR_TAG in (model.tags or {})


class _Ticket:
    """One place in the FIFO queue of a model's lock: a version of `<name>.lock`, kept fresh by heartbeats.

    MLflow numbers the versions of a model atomically and never reuses a number, so the lowest live
    ticket holds the lock. A ticket whose heartbeat (its server-side last-updated time) is older than its
    TTL belongs to a killed process; the next waiter deletes it. Only server timestamps are compared.
    """

    def __init__(self, client: MlflowClient, name: str, action: str, ttl: float):
        self.client, self.name, self.ttl = client, name, ttl
        self.lock_model = f"{name}{LOCK_SUFFIX}"
        self.owner = f"{action!r} by {socket.gethostname()} pid {os.getpid()}"
        self.version = 0
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat_while_held, daemon=True)

    def _take(self) -> None:
        with registry_errors("take a ticket of the registry lock", self.lock_model):
            try:
                self.client.create_registered_model(
                    self.lock_model, tags={LOCK_FOR_TAG: self.name},
                    description=f"tlpipe's lock of registered model {self.name!r}: each version is a process "
                                f"waiting for it or holding it (the lowest)")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            self.version = int(self.client.create_model_version(
                self.lock_model, source=f"tlpipe-lock:///{self.name}", description=self.owner,
                tags={LOCK_OWNER_TAG: self.owner, LOCK_TTL_TAG: str(self.ttl)}, await_creation_for=0).version)

    def _beat(self) -> int | None:
        """Refresh the ticket; the server's time (ms), or None when a waiter deleted the ticket as stale."""
        with registry_errors("refresh the registry lock", self.lock_model):
            try:
                return self.client.update_model_version(self.lock_model, str(self.version),
                                                        description=self.owner).last_updated_timestamp
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

    def _delete(self, version: int | str) -> None:
        with registry_errors("release the registry lock", self.lock_model):
            try:
                self.client.delete_model_version(self.lock_model, str(version))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # already deleted by a waiter
                    raise

    def acquire(self, timeout: float) -> None:
        """Wait (with backoff) until every ticket before this one is released or stale."""
        deadline, delay = time.monotonic() + timeout, 0.1
        self._take()
        while True:
            now = self._beat()
            if now is None:  # this process stalled past its TTL and lost its place: queue again
                self._take()
                continue
            with registry_errors("read the registry lock", self.lock_model):
                tickets = self.client.search_model_versions(f"name = '{self.lock_model}'")
            ahead = sorted((t for t in tickets if int(t.version) < self.version),
                           key=lambda t: int(t.version))
            waiting_for = []
            for ticket in ahead:
                idle_s = (now - ticket.last_updated_timestamp) / 1000
                if idle_s > float(ticket.tags.get(LOCK_TTL_TAG, LOCK_TTL_S)):
                    log.warning("%s: taking over the lock from %s, stale (no heartbeat for %.0f s)",
                                self.name, ticket.tags.get(LOCK_OWNER_TAG, "?"), idle_s)
                    self._delete(ticket.version)
                else:
                    waiting_for.append(ticket)
            if not waiting_for:
                self._heartbeat.start()
                return
            if time.monotonic() >= deadline:
                self._delete(self.version)
                holder = waiting_for[0].tags.get(LOCK_OWNER_TAG, "?")
                raise RegistryLockTimeout(
                    f"registered model {self.name!r} is busy: {holder} holds its lock (version "
                    f"{waiting_for[0].version} of {self.lock_model!r}); gave up waiting after {timeout:g} s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())) * random.uniform(0.5, 1.0))
            delay = min(delay * 1.5, 2.0)

    def _beat_while_held(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if self._beat() is None:
                    log.error("%s: lost the registry lock (a waiter judged it stale)", self.name)
                    return
            except Exception as exc:  # a missed beat is not fatal: the TTL allows two more
                log.warning("%s: registry lock heartbeat failed (%s)", self.name, exc)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join()
        try:
            self._delete(self.version)
        except (MlflowException, RegistryPermissionError) as exc:  # the work is done; the ticket goes stale
            log.warning("%s: could not release the registry lock (%s); it expires after %g s",
                        self.name, exc, self.ttl)


@contextmanager
def locked(client: MlflowClient, name: str, action: str, timeout: float = LOCK_TIMEOUT_S,
           ttl: float = LOCK_TTL_S) -> Iterator[None]:
    """Hold the registry lock of `name` (MLflow has no compare-and-set on aliases and tags).

    Every change of a model's aliases and champion history is made under it, after re-reading them.
    Raises RegistryLockTimeout naming the model and the holder after `timeout` seconds.
    """
    with registry_errors("read the registered model", name):
        client.get_registered_model(name)  # an unknown model is an error, not a new lock
    ticket = _Ticket(client, name, action, ttl)
    ticket.acquire(timeout)
    try:
        yield
    finally:
        ticket.release()


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
    """Point `champion` at `version`; returns the previous champion. Appends to the history unless `record` is False.

    The caller holds `locked(client, name)`.
    """
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


def promote(client: MlflowClient, name: str, version: str, timeout: float = LOCK_TIMEOUT_S) -> str | None:
    """Under the registry lock, point `champion` at `version` (recorded); returns the previous champion."""
    with locked(client, name, f"promote version {version}", timeout=timeout):
        return move_champion(client, name, version)


def rollback(client: MlflowClient, name: str, timeout: float = LOCK_TIMEOUT_S) -> tuple[str, str]:
    """Under the registry lock, give `champion` back to the previous champion; returns (from, to)."""
    with locked(client, name, "rollback", timeout=timeout):
        return move_champion_back(client, name)


def _rollback_history(client: MlflowClient, name: str) -> tuple[str, list[str]]:
    """(current champion, the history without it, ending in the champion before it), or a RegistryError."""
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"registered model {name!r} has no champion to roll back from")
    history = champion_history(client, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"registered model {name!r}: version {current} is the first recorded champion; "
                            f"there is no earlier champion to roll back to (use `tlpipe models promote`)")
    return current, history


def previous_champion(client: MlflowClient, name: str) -> tuple[str, str]:
    """(current champion, the version a rollback would give `champion` to), or a RegistryError saying why there
    is none. The caller holds `locked(client, name)`."""
    current, history = _rollback_history(client, name)
    return current, history[-1]


def move_champion_back(client: MlflowClient, name: str) -> tuple[str, str]:
    """Give `champion` back to the previous champion; returns (from, to). The caller holds `locked(client, name)`."""
    current, history = _rollback_history(client, name)
    with registry_errors("record the champion history", name):
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    move_champion(client, name, history[-1], record=False)
    return current, history[-1]
