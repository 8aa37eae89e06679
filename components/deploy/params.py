"""The deploy step's parameters: the one owner of their defaults and choices (standard library only).

The pipeline, the KFP adapter (literal copies), `tlpipe deploy` and core.deploy take their defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass

DEPLOY_CHOICES = ("off", "kserve")
DEPLOYMENT_MODES = ("RawDeployment", "Serverless")


@dataclass(frozen=True)
class DeployParams:
    """Where and how the champion is served (components/deploy/README.md)."""

    deploy: str = "off"  # one of DEPLOY_CHOICES
    inference_service: str = "fish-classifier"  # the InferenceService's name
    namespace: str = "tlpipe"  # where it runs (manifests/: RBAC lets the step patch services only there)
    deployment_mode: str = "RawDeployment"  # KServe's serving.kserve.io/deploymentMode
    canary_traffic_percent: int = 0  # a challenger's share of traffic (Serverless only); 0: champion only
    runtime: str = "tlpipe-mlflow"  # the ServingRuntime of manifests/kserve (our image, `mlflow models serve`)
    service_account: str = "tlpipe-predictor"  # the predictor's account: its Secret holds the S3 credentials
    artifacts_destination: str = "s3://mlflow/artifacts"  # the MLflow server's --artifacts-destination
    ready_timeout_s: int = 900  # how long to wait for Ready

    def validate(self) -> DeployParams:
        """A ValueError naming the parameter that is out of range."""
        if self.deploy not in DEPLOY_CHOICES:
            raise ValueError(f"deploy must be one of {DEPLOY_CHOICES}, got {self.deploy!r}")
        if self.deployment_mode not in DEPLOYMENT_MODES:
            raise ValueError(f"deployment_mode must be one of {DEPLOYMENT_MODES}, got {self.deployment_mode!r}")
        if not 0 <= self.canary_traffic_percent < 100:
            raise ValueError(f"canary_traffic_percent must be in 0..99, got {self.canary_traffic_percent}")
        if self.canary_traffic_percent and self.deployment_mode != "Serverless":
            raise ValueError(f"canary_traffic_percent {self.canary_traffic_percent} needs deployment_mode "
                             f"Serverless: KServe splits traffic only through Knative, and in RawDeployment a "
                             f"canary would take all of it")
        if not self.artifacts_destination.startswith("s3://"):
            raise ValueError(f"artifacts_destination must be an s3:// URI, got {self.artifacts_destination!r}")
        if self.ready_timeout_s <= 0:
            raise ValueError(f"ready_timeout_s must be > 0, got {self.ready_timeout_s}")
        for name in ("inference_service", "namespace", "runtime", "service_account"):
            value = getattr(self, name)
            if not value or len(value) > 63 or not all(c.isalnum() or c == "-" for c in value) \
                    or not value[0].isalpha() or value != value.lower() or value.endswith("-"):
                raise ValueError(f"{name} must be a DNS label (lower-case letters, digits, '-'), got {value!r}")
        return self
