"""`tlpipe models list|show|promote|rollback`: the MLflow model registry for people at a terminal."""

from __future__ import annotations

import argparse
import json
import sys

from tlpipe.components.register.params import RegisterParams

DEFAULT_NAME = RegisterParams.registered_model_name
NAME_HELP = f"registered model name (the pipeline's default: {DEFAULT_NAME})"


def _client():
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils

    mlflow_utils.connect(attempts=3)
    return MlflowClient()


def _aliases_by_version(model) -> dict[str, list[str]]:
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    return by_version


def _version_info(client, name: str, ref: str) -> dict:
    """A version (number or @alias) as a plain dict."""
    from tlpipe.components.register import registry

    with registry.registry_errors("read the model version", name):
        mv = (client.get_model_version_by_alias(name, ref[1:]) if ref.startswith("@")
              else client.get_model_version(name, ref))
        model = client.get_registered_model(name)
    return {"name": name, "version": mv.version, "aliases": _aliases_by_version(model).get(mv.version, []),
            "created": mv.creation_timestamp, "run_id": mv.run_id, "source": mv.source, "status": mv.status,
            "description": mv.description or "", "tags": dict(mv.tags)}


def list_models(args: argparse.Namespace) -> int:
    """Registered models (no name; not the registry locks) or the versions of one model, newest first."""
    from tlpipe.components.common.log import get_logger
    from tlpipe.components.register import registry

    client = _client()
    if not args.name:
        for model in client.search_registered_models():
            if registry.is_lock_model(model):
                continue
            aliases = ", ".join(f"{a}=v{v}" for a, v in sorted((model.aliases or {}).items()))
            print(f"{model.name:<30} {aliases or '(no aliases)'}")
        return 0
    model = client.get_registered_model(args.name)
    aliases = _aliases_by_version(model)
    versions = sorted(client.search_model_versions(f"name = '{args.name}'"), key=lambda v: -int(v.version))
    print(f"{'version':<8} {'aliases':<22} {'stage':<10} {'test_acc':<9} decision")
    for v in versions:
        decision = (v.description or "").replace("\n", " ")
        print(f"{v.version:<8} {','.join(sorted(aliases.get(v.version, []))) or '-':<22} "
              f"{v.tags.get('stage', '-'):<10} {v.tags.get('test_accuracy', '-')[:7]:<9} {decision[:100]}")
    get_logger("models").info("%d version(s) of %s", len(versions), args.name)
    return 0


def show(args: argparse.Namespace) -> int:
    """One version in full: aliases, source, run, tags, gate decision."""
    info = _version_info(_client(), args.name, args.version)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    for key in ("name", "version", "aliases", "status", "run_id", "source", "description"):
        print(f"{key:<12} {info[key]}")
    for key, value in sorted(info["tags"].items()):
        print(f"  {key:<40} {value}")
    return 0


def promote(args: argparse.Namespace) -> int:
    """Point `champion` at a version by hand (recorded in the champion history, so rollback undoes it)."""
    from tlpipe.components.register import registry

    client = _client()
    if not args.kserve:
        previous = registry.promote(client, args.name, args.version, timeout=_lock_timeout(args))
    else:
        with registry.locked(client, args.name, f"promote version {args.version}", timeout=_lock_timeout(args)):
            with registry.registry_errors("check the version", args.name):
                client.get_model_version(args.name, args.version)
            previous = registry.alias_version(client, args.name, registry.CHAMPION)
            _with_traffic(args, client, args.version, previous,
                          lambda: registry.move_champion(client, args.name, args.version))
    print(f"{args.name}: champion {('v' + previous) if previous else '(none)'} -> v{args.version}"
          + (f"; {args.kserve} serves v{args.version}" if args.kserve else ""))
    return 0


def rollback(args: argparse.Namespace) -> int:
    """Move `champion` back to the version that held it before."""
    from tlpipe.components.register import registry

    client = _client()
    if not args.kserve:
        current, target = registry.rollback(client, args.name, timeout=_lock_timeout(args))
    else:
        with registry.locked(client, args.name, "rollback", timeout=_lock_timeout(args)):
            current, target = registry.previous_champion(client, args.name)
            _with_traffic(args, client, target, current, lambda: registry.move_champion_back(client, args.name))
    print(f"{args.name}: champion v{current} -> v{target} (rolled back)"
          + (f"; {args.kserve} serves v{target}" if args.kserve else ""))
    return 0


def _with_traffic(args: argparse.Namespace, client, version: str, previous: str | None, move_alias) -> None:
    """Serve `version` from the InferenceService, then move the alias (both under the registry lock).

    The service moves first and must become Ready: if it does not, its previous spec is restored and the alias
    stays. If the alias then cannot move, the service is moved back to `previous`. Either way they agree.
    """
    from tlpipe.components.deploy import core

    namespace, _, service = args.kserve.partition("/")
    if not namespace or not service:
        raise ValueError(f"--kserve must be NAMESPACE/NAME, got {args.kserve!r}")
    core.move_traffic(namespace, service, args.name, version, client, timeout_s=args.ready_timeout_s)
    try:
        move_alias()
    except BaseException:
        if previous:
            core.move_traffic(namespace, service, args.name, previous, client, timeout_s=args.ready_timeout_s)
        raise


def _guarded(handler):
    """Print registry errors as one line on stderr and exit 1 instead of a traceback."""
    def run(args: argparse.Namespace) -> int:
        from mlflow.exceptions import MlflowException

        from tlpipe.components.common.mlflow_utils import MlflowUnreachableError
        from tlpipe.components.register.registry import RegistryError, RegistryPermissionError

        try:
            return handler(args)
        except (MlflowException, RegistryError, RegistryPermissionError, MlflowUnreachableError) as exc:
            print(f"tlpipe models {args.models_command}: {exc}", file=sys.stderr)
            return 1
    return run


def _alias_move_options(parser: argparse.ArgumentParser) -> None:
    """--kserve, --ready-timeout-s and --lock-timeout of promote and rollback."""
    import os

    from tlpipe.cli.deploy import KSERVE_ENV
    from tlpipe.components.deploy.params import DeployParams

    parser.add_argument("--kserve", metavar="NAMESPACE/NAME", default=os.environ.get(KSERVE_ENV, ""),
                        help=f"also move the traffic of this InferenceService (made by `tlpipe deploy`), the "
                             f"service first, then the alias (default: ${KSERVE_ENV})")
    parser.add_argument("--ready-timeout-s", type=float, default=DeployParams.ready_timeout_s,
                        help="with --kserve: seconds to wait for the service to become Ready")
    parser.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                        help="how long to wait for a concurrent promote, rollback or register of the "
                             "model to finish (default: registry.LOCK_TIMEOUT_S, 10 minutes)")


def _lock_timeout(args: argparse.Namespace) -> float:
    from tlpipe.components.register import registry

    return registry.LOCK_TIMEOUT_S if args.lock_timeout is None else args.lock_timeout


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list, inspect, promote and roll back registered model versions",
                            description="The MLflow model registry (MLFLOW_TRACKING_URI): versions, the "
                                        "champion/challenger aliases, manual promotion and rollback.")
    models = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    p = models.add_parser("list", help="registered models, or the versions of one model with aliases and scores")
    p.add_argument("name", nargs="?", help=f"{NAME_HELP}; omit to list all models")
    p.set_defaults(func=_guarded(list_models))

    p = models.add_parser("show", help="one version in full: aliases, run, tags, gate decision")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("version", nargs="?", default="@champion", help="version number or @alias (default @champion)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guarded(show))

    p = models.add_parser("promote", help="make a version the champion (the previous one is remembered)")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("version", help="version number to promote")
    _alias_move_options(p)
    p.set_defaults(func=_guarded(promote))

    p = models.add_parser("rollback", help="give the champion alias back to the previous champion")
    p.add_argument("name", help=NAME_HELP)
    _alias_move_options(p)
    p.set_defaults(func=_guarded(rollback))
