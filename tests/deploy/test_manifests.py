"""manifests/: every kustomization the quickstart applies renders offline with `kubectl kustomize` and validates
offline: built-in kinds against the Kubernetes OpenAPI schemas (kubernetes-validate --strict), the
SparkApplication against the Spark operator's API models (kubeflow-spark-api). RBAC stays least-privilege and
no credential is committed. (Upstream KFP is applied by version from its remote kustomize base and cannot be
fetched here; it is not rendered.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tlpipe.components.common.settings import ALL_ENV_VARS, CREDENTIALS_SECRET

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = sorted(p.parent for p in MANIFESTS.glob("*/kustomization.yaml"))
K8S_VERSION = "1.32.2"  # the kind node image in manifests/kind/cluster.yaml
NAMESPACE = "tlpipe"


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not installed (it renders kustomizations offline: `kubectl kustomize`)")
    return found


def render(directory: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {d.name: render(d) for d in KUSTOMIZATIONS}


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_the_quickstart_applies_exactly_these_kustomizations():
    script = (MANIFESTS / "quickstart.sh").read_text()
    assert {d.name for d in KUSTOMIZATIONS} == {"tlpipe", "spark-smoke", "kserve"}
    for name in ("manifests/tlpipe", "manifests/spark-smoke", "manifests/spark-operator/values.yaml",
                 "manifests/kind/cluster.yaml", "manifests/kserve"):
        assert name in script, name
    assert re.search(r"^KFP_VERSION=\d+\.\d+\.\d+\s", script, re.M), "KFP pinned to a release"
    assert re.search(r"^SPARK_OPERATOR_VERSION=\d+\.\d+\.\d+\s", script, re.M), "Spark operator pinned"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_builtin_kinds_validate_strictly(directory, rendered):
    docs = rendered[directory.name]
    builtin = [d for d in docs if d["apiVersion"].split("/")[0] not in ("sparkoperator.k8s.io", "serving.kserve.io")]
    for doc in builtin:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for doc in docs:
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]


def test_strict_validation_catches_a_wrong_field(rendered):
    """The validator is not a no-op: a misspelled field in our Deployment fails it."""
    deployment = by_kind(rendered["tlpipe"], "Deployment")["mlflow"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_spark_application_matches_the_operator_api(rendered):
    from kubeflow_spark_api.models.spark_v1beta2_spark_application import SparkV1beta2SparkApplication

    (app,) = [d for d in rendered["spark-smoke"] if d["kind"] == "SparkApplication"]
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    model = SparkV1beta2SparkApplication.from_dict(app)
    # from_dict drops fields the API does not know: a round trip that loses nothing means every field is known.
    assert model.to_dict() == app
    assert app["spec"]["driver"]["serviceAccount"] == "spark-driver"
    assert app["spec"]["image"] == "tlpipe/spark:0.1.0"
    pyspark_version = (REPO / "requirements.lock").read_text().split("pyspark==")[1].split()[0]
    assert app["spec"]["sparkVersion"] == pyspark_version
    job = app["spec"]["mainApplicationFile"].removeprefix("local://")
    assert job in (REPO / "docker" / "spark" / "Dockerfile").read_text(), "the job file is in the image"


def test_spark_application_model_rejects_a_wrong_type():
    from kubeflow_spark_api.models.spark_v1beta2_spark_application import SparkV1beta2SparkApplication

    app = yaml.safe_load((MANIFESTS / "spark-smoke" / "sparkapplication.yaml").read_text())
    app["spec"]["executor"]["instances"] = "two"
    with pytest.raises(ValueError, match="instances"):
        SparkV1beta2SparkApplication.from_dict(app)


def test_rbac_is_least_privilege(rendered):
    docs = rendered["tlpipe"]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles, bindings = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")

    (submit_rule,) = roles["sparkapplication-submitter"]["rules"]
    assert submit_rule == {"apiGroups": ["sparkoperator.k8s.io"], "resources": ["sparkapplications"],
                           "verbs": ["create", "get", "watch", "delete"]}
    assert bindings["kfp-pipeline-runner-sparkapplications"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]

    assert roles["inferenceservice-deployer"]["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]
    assert bindings["kfp-pipeline-runner-inferenceservices"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]

    driver_rules = roles["spark-driver"]["rules"]
    assert all(r["apiGroups"] == [""] for r in driver_rules)
    assert {res for r in driver_rules for res in r["resources"]} == {"pods", "services", "configmaps"}
    assert bindings["spark-driver"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "spark-driver", "namespace": NAMESPACE}]


def test_namespace_may_reach_the_cluster_s3_store(rendered):
    (namespace,) = by_kind(rendered["tlpipe"], "Namespace").values()
    # KFP's SeaweedFS NetworkPolicy admits S3 clients from namespaces labelled as Kubeflow profiles.
    assert namespace["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeflow-profile"
    values = yaml.safe_load((MANIFESTS / "spark-operator" / "values.yaml").read_text())
    assert values["spark"]["jobNamespaces"] == [NAMESPACE]
    assert values["spark"]["rbac"]["create"] is False  # ours, least privilege, instead


def test_no_credentials_committed(rendered):
    docs = [d for docs in rendered.values() for d in docs]
    assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are generated by quickstart.sh"
    text = "\n".join(yaml.safe_dump(d) for d in docs)
    for literal in re.findall(r"name: (AWS_SECRET_ACCESS_KEY|POSTGRES_PASSWORD)\n\s+value:", text):
        pytest.fail(f"{literal} given as a literal value")
    referenced = set(re.findall(r"secretKeyRef:\s+key: (\S+)\s+name: " + CREDENTIALS_SECRET, text))
    assert referenced and referenced <= set(ALL_ENV_VARS)


def test_quickstart_generates_every_credential_variable():
    script = (MANIFESTS / "quickstart.sh").read_text()
    heredoc = script.split('cat >"$env_file" <<ENV\n')[1].split("\nENV\n")[0]
    assert [line.split("=")[0] for line in heredoc.splitlines()] == list(ALL_ENV_VARS)
    assert f"create secret generic {CREDENTIALS_SECRET}" in script


def test_kind_cluster_pins_its_node_image():
    cluster = yaml.safe_load((MANIFESTS / "kind" / "cluster.yaml").read_text())
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = cluster["nodes"]
    assert re.fullmatch(rf"kindest/node:v{K8S_VERSION}@sha256:[0-9a-f]{{64}}", node["image"])


def test_serving_runtime_matches_the_kserve_api_and_the_deploy_step(rendered):
    from tlpipe.components.deploy import inference_service as isvc
    from tlpipe.components.deploy.params import DeployParams

    (runtime,) = rendered["kserve"]
    assert runtime["kind"] == "ServingRuntime" and runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isvc.model_errors("V1alpha1ServingRuntime", runtime) == []
    broken = yaml.safe_load(yaml.safe_dump(runtime))
    broken["spec"]["containers"][0]["readinesProbe"] = {}
    assert isvc.model_errors("V1alpha1ServingRuntime", broken) == [
        "spec.containers[0].readinesProbe: unknown field of V1Container"]
    assert runtime["metadata"]["name"] == DeployParams.runtime
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == [isvc.MODEL_FORMAT]
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == "tlpipe/train:0.1.0"  # the image with TensorFlow, Keras, mlflow and tlpipe
    assert container["command"] + container["args"][:2] == ["mlflow", "models", "serve", "-m", "/mnt/models"]
    mlflow = (REPO / "requirements.lock").read_text().split("\nmlflow==")[1].split(".")[0]
    assert runtime["spec"]["supportedModelFormats"][0]["version"] == mlflow

    accounts = by_kind(rendered["tlpipe"], "ServiceAccount")
    assert accounts[DeployParams.service_account]["secrets"] == [{"name": CREDENTIALS_SECRET}]
    assert accounts[DeployParams.service_account]["automountServiceAccountToken"] is False


def test_quickstart_pins_kserve_to_the_sdk_and_points_predictors_at_s3():
    from importlib.metadata import version

    script = (MANIFESTS / "quickstart.sh").read_text()
    assert re.search(rf"^KSERVE_VERSION={re.escape(version('kserve'))}\s", script, re.M)
    assert re.search(r"^CERT_MANAGER_VERSION=\d+\.\d+\.\d+\s", script, re.M)
    assert "kserve.controller.deploymentMode=RawDeployment" in script
    assert not re.search(r"(helm|kubectl)[^\n]*knative", script, re.I), "no Knative is installed"
    assert f"annotate secret {CREDENTIALS_SECRET}" in script and "serving.kserve.io/s3-endpoint=" in script


@pytest.mark.parametrize("script", ["manifests/quickstart.sh", "manifests/kserve/sample-request.sh", "docker/build.sh", "docker/images-check.sh",
                                    "docker/spark/entrypoint.sh"])
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True).returncode == 0
