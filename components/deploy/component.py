"""KFP adapter of deploy (components/deploy/README.md). The pipeline wraps `deploy_op` with dsl.component."""

from typing import NamedTuple


def deploy_op(
    model_version: str,
    registered_model_name: str = "fish-classifier",
    deploy: str = "off",
    inference_service: str = "fish-classifier",
    namespace: str = "tlpipe",
    deployment_mode: str = "RawDeployment",
    canary_traffic_percent: int = 0,
    runtime: str = "tlpipe-mlflow",
    service_account: str = "tlpipe-predictor",
    artifacts_destination: str = "s3://mlflow/artifacts",
    ready_timeout_s: int = 900,
) -> NamedTuple("DeployOutputs", [("url", str), ("champion", str), ("canary", str)]):
    """Serve the registry's champion from a KServe InferenceService, the challenger as canary; wait for Ready.

    Creates or patches the InferenceService to match the registry's `champion` and `challenger` aliases. When
    the predictor fails (its model does not load, its image cannot be pulled, it crashes) or is not Ready in
    time, the previous spec is put back and the step fails with the predictor's error.

    Args:
        model_version: The version register just wrote (its output `model_version`); it orders this step
            after register. What is served is read from the aliases.
        registered_model_name: The registered model in the MLflow model registry.
        deploy: "off" (nothing is deployed) or "kserve".
        inference_service: The InferenceService's name.
        namespace: The namespace of the InferenceService (the step's RBAC allows only it).
        deployment_mode: KServe's deployment mode, "RawDeployment" or "Serverless".
        canary_traffic_percent: The challenger's share of the traffic (0-99) while it is not the champion;
            0 serves the champion only. Needs deployment_mode Serverless.
        runtime: The ServingRuntime that serves the MLflow model (manifests/kserve).
        service_account: The predictor's service account, whose Secret holds the S3 credentials.
        artifacts_destination: The MLflow server's --artifacts-destination (where proxied artifacts live).
        ready_timeout_s: Seconds to wait for the InferenceService to become Ready.

    Returns:
        DeployOutputs: `url` (the service's URL, "" when off), `champion` (the version served) and `canary`
        (the challenger's version when it goes out as canary, else "").
    """
    from collections import namedtuple

    from tlpipe.components.deploy import core
    from tlpipe.components.deploy.params import DeployParams

    params = DeployParams(deploy=deploy, inference_service=inference_service, namespace=namespace,
                          deployment_mode=deployment_mode, canary_traffic_percent=canary_traffic_percent,
                          runtime=runtime, service_account=service_account,
                          artifacts_destination=artifacts_destination, ready_timeout_s=ready_timeout_s)
    result = core.deploy(registered_model_name, params)
    outputs = namedtuple("DeployOutputs", ["url", "champion", "canary"])
    return outputs(result.url, result.champion, result.canary)
