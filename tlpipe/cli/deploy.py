"""`tlpipe deploy`: serve the registry's champion (the challenger as canary) from a KServe InferenceService."""

from __future__ import annotations

import argparse
import json

from tlpipe.components.deploy.params import DEPLOYMENT_MODES, DeployParams
from tlpipe.components.register.params import RegisterParams

KSERVE_ENV = "TLPIPE_KSERVE"  # NAMESPACE/NAME: the InferenceService `tlpipe models promote/rollback` moves


def deploy(args: argparse.Namespace) -> int:
    from tlpipe.components.deploy import core, inference_service

    params = DeployParams(deploy="kserve", inference_service=args.inference_service, namespace=args.namespace,
                          deployment_mode=args.deployment_mode, canary_traffic_percent=args.canary_traffic_percent,
                          runtime=args.runtime, service_account=args.service_account,
                          artifacts_destination=args.artifacts_destination,
                          ready_timeout_s=args.ready_timeout_s).validate()
    if args.dry_run:
        from mlflow.tracking import MlflowClient

        from tlpipe.components.common import mlflow_utils

        mlflow_utils.connect(attempts=3)
        target = core.target(MlflowClient(), args.registered_model_name, params)
        print(json.dumps(inference_service.build(args.registered_model_name, target, params), indent=2))
        return 0
    result = core.deploy(args.registered_model_name, params)
    canary = f", canary v{result.canary} at {params.canary_traffic_percent}%" if result.canary else ""
    print(f"{params.namespace}/{params.inference_service}: champion v{result.champion}{canary}, Ready at "
          f"{result.url or '(no URL)'}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    d = DeployParams()
    p = sub.add_parser("deploy", help="serve the champion from a KServe InferenceService (challenger as canary)",
                       description="Create or patch a KServe InferenceService (kubeconfig, or the in-cluster "
                                   "account) to serve the registry's champion; with --canary-traffic-percent the "
                                   "challenger gets that share (Serverless mode). Waits for Ready; on failure "
                                   "the previous spec is put back and the predictor's error is shown.")
    p.add_argument("--registered-model-name", default=RegisterParams.registered_model_name,
                   help="registered model in MLflow")
    p.add_argument("--inference-service", default=d.inference_service, help="InferenceService name")
    p.add_argument("--namespace", default=d.namespace, help="its namespace")
    p.add_argument("--deployment-mode", default=d.deployment_mode, choices=DEPLOYMENT_MODES,
                   help="KServe deployment mode")
    p.add_argument("--canary-traffic-percent", type=int, default=d.canary_traffic_percent,
                   help="challenger's share of traffic, 0-99 (Serverless only; 0: the champion only)")
    p.add_argument("--runtime", default=d.runtime, help="ServingRuntime (manifests/kserve)")
    p.add_argument("--service-account", default=d.service_account, help="predictor's service account (S3 Secret)")
    p.add_argument("--artifacts-destination", default=d.artifacts_destination,
                   help="the MLflow server's --artifacts-destination")
    p.add_argument("--ready-timeout-s", type=int, default=d.ready_timeout_s, help="seconds to wait for Ready")
    p.add_argument("--dry-run", action="store_true", help="print the InferenceService instead of applying it")
    p.set_defaults(func=deploy)
