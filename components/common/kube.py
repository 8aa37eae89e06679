"""The Kubernetes API client of the steps that create custom objects (preprocess's SparkApplication, deploy's
InferenceService): the pod's service account in a cluster, the kubeconfig outside one."""

from __future__ import annotations


def api_client():
    """A `kubernetes.client.ApiClient` from the in-cluster config, else from the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
