#!/usr/bin/env bash
# Local Kubernetes quickstart for tlpipe: a kind (or minikube) cluster with KFP standalone, the Kubeflow Spark
# Operator, MLflow (PostgreSQL + artifacts in the cluster's S3 store), the tlpipe namespace, generated
# credentials and least-privilege RBAC; then port-forwards and the next commands.
#
#   manifests/quickstart.sh up       create/upgrade everything (idempotent), port-forward, print URLs
#   manifests/quickstart.sh smoke    run a small SparkApplication on the tlpipe/spark image and show its log
#   manifests/quickstart.sh forward  (re)start the port-forwards only
#   manifests/quickstart.sh down     stop the port-forwards and delete the cluster
#
# Settings (environment): CLUSTER=kind|minikube (kind), NAME (tlpipe), IMAGE_PREFIX (tlpipe), IMAGE_TAG (the
# project version), SKIP_BUILD=1 (images already loaded), KFP_PORT (8080), MLFLOW_PORT (5000), S3_PORT (8333),
# WITH_KSERVE=1 (also cert-manager + KServe in RawDeployment mode, no Knative, and tlpipe's serving runtime).
# Needs: kind or minikube, kubectl, helm 3, and docker or podman (for docker/build.sh).
set -euo pipefail

# Pinned upstream releases (installed by version from upstream, not copied here).
KFP_VERSION=2.17.3               # KFP backend matching the lock's kfp-server-api==2.17.3 (SDK kfp==2.17.0)
SPARK_OPERATOR_VERSION=2.4.0     # Helm chart + operator; its CRD is what kubeflow-spark-api==2.4.0 models
KSERVE_VERSION=0.21.0            # KServe controller + CRDs (RawDeployment); the kserve==0.21.0 SDK models them
CERT_MANAGER_VERSION=1.16.2      # KServe's webhooks need cert-manager
KFP_REMOTE=github.com/kubeflow/pipelines/manifests/kustomize
SPARK_OPERATOR_REPO=https://kubeflow.github.io/spark-operator

SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
CLUSTER=${CLUSTER:-kind}
NAME=${NAME:-tlpipe}
IMAGE_PREFIX=${IMAGE_PREFIX:-tlpipe}
IMAGE_TAG=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}
KFP_PORT=${KFP_PORT:-8080}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
S3_PORT=${S3_PORT:-8333}
STATE=${TLPIPE_HOME:-.tlpipe}/quickstart
NS=tlpipe                                        # runs namespace: MLflow, Spark applications
S3_IN_CLUSTER=http://seaweedfs.kubeflow.svc.cluster.local:8333
MLFLOW_IN_CLUSTER=http://mlflow.tlpipe.svc.cluster.local:5000

say() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "missing: $1 ($2)" >&2; exit 1; }; }

create_cluster() {
  case "$CLUSTER" in
    kind)
      need kind "https://kind.sigs.k8s.io"
      if kind get clusters 2>/dev/null | grep -qx "$NAME"; then echo "kind cluster $NAME exists"
      else kind create cluster --name "$NAME" --config manifests/kind/cluster.yaml; fi
      kubectl config use-context "kind-$NAME" ;;
    minikube)
      need minikube "https://minikube.sigs.k8s.io"
      minikube start --profile "$NAME" --cpus "${MINIKUBE_CPUS:-4}" --memory "${MINIKUBE_MEMORY:-8g}" \
        --kubernetes-version v1.32.2
      kubectl config use-context "$NAME" ;;
    *) echo "CLUSTER must be kind or minikube, not '$CLUSTER'" >&2; exit 2 ;;
  esac
}

install_kfp() {
  say "Kubeflow Pipelines $KFP_VERSION (standalone, platform-agnostic)"
  kubectl apply -k "$KFP_REMOTE/cluster-scoped-resources?ref=$KFP_VERSION"
  kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
  kubectl apply -k "$KFP_REMOTE/env/platform-agnostic?ref=$KFP_VERSION"
  echo "waiting for KFP deployments (first start pulls images: ~5-10 min)"
  kubectl -n kubeflow wait --for condition=available --timeout=1200s deployment --all
}

install_spark_operator() {
  say "Kubeflow Spark Operator $SPARK_OPERATOR_VERSION (jobs in namespace $NS)"
  helm upgrade --install spark-operator spark-operator --repo "$SPARK_OPERATOR_REPO" \
    --version "$SPARK_OPERATOR_VERSION" --namespace spark-operator --create-namespace \
    --values manifests/spark-operator/values.yaml --wait --timeout 10m
}

# The Secrets are generated here, never committed: S3 access = the cluster store's own key (KFP's
# mlpipeline-minio-artifact); a random PostgreSQL password, created once (the database keeps the first one).
create_secrets() {
  say "Secrets tlpipe-credentials (namespaces $NS and kubeflow) and mlflow-postgres"
  local key secret env_file
  key=$(kubectl -n kubeflow get secret mlpipeline-minio-artifact -o jsonpath='{.data.accesskey}' | base64 -d)
  secret=$(kubectl -n kubeflow get secret mlpipeline-minio-artifact -o jsonpath='{.data.secretkey}' | base64 -d)
  mkdir -p "$STATE" && chmod 700 "$STATE"
  env_file="$STATE/credentials.env"
  (umask 077 && cat >"$env_file" <<ENV
S3_ENDPOINT_URL=$S3_IN_CLUSTER
AWS_ACCESS_KEY_ID=$key
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
MLFLOW_TRACKING_URI=$MLFLOW_IN_CLUSTER
MLFLOW_S3_ENDPOINT_URL=$S3_IN_CLUSTER
ENV
  )
  for ns in "$NS" kubeflow; do  # KFP standalone runs steps in kubeflow; Spark pods run in $NS
    kubectl -n "$ns" create secret generic tlpipe-credentials --from-env-file="$env_file" \
      --dry-run=client -o yaml | kubectl apply -f -
  done
  if ! kubectl -n "$NS" get secret mlflow-postgres >/dev/null 2>&1; then
    kubectl -n "$NS" create secret generic mlflow-postgres --from-literal=POSTGRES_USER=mlflow \
      --from-literal=POSTGRES_DB=mlflow --from-literal=POSTGRES_PASSWORD="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  fi
  # Host-side variables for the CLI, through the port-forwards (same keys, local URLs).
  (umask 077 && sed -e "s|$S3_IN_CLUSTER|http://127.0.0.1:$S3_PORT|" \
      -e "s|$MLFLOW_IN_CLUSTER|http://127.0.0.1:$MLFLOW_PORT|" "$env_file" | sed 's/^/export /' >"$STATE/cluster.env")
}

# Our own manifests, with the image prefix/tag of this install (a throw-away overlay over manifests/tlpipe).
apply_tlpipe() {
  say "tlpipe namespace, RBAC, MLflow + PostgreSQL"
  local overlay
  overlay=$(mktemp -d)
  cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $PWD/manifests/tlpipe
images:
  - name: tlpipe/mlflow
    newName: $IMAGE_PREFIX/mlflow
    newTag: "$IMAGE_TAG"
YAML
  kubectl kustomize --load-restrictor LoadRestrictionsNone "$overlay" | kubectl apply -f -
  rm -rf "$overlay"
  kubectl -n "$NS" rollout status statefulset/mlflow-postgres --timeout=600s
  kubectl -n "$NS" rollout status deployment/mlflow --timeout=600s
}

# Optional: KServe in RawDeployment mode (plain Deployments + Services, no Knative, no Istio), then the serving
# runtime of tlpipe's registered model and the S3 endpoint of the predictors' credentials.
install_kserve() {
  say "cert-manager $CERT_MANAGER_VERSION, KServe $KSERVE_VERSION (RawDeployment), runtime tlpipe-mlflow"
  helm upgrade --install cert-manager cert-manager --repo https://charts.jetstack.io \
    --version "v$CERT_MANAGER_VERSION" --namespace cert-manager --create-namespace \
    --set crds.enabled=true --wait --timeout 10m
  helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version "v$KSERVE_VERSION" \
    --namespace kserve --create-namespace --wait
  helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve --version "v$KSERVE_VERSION" \
    --namespace kserve --set kserve.controller.deploymentMode=RawDeployment --wait --timeout 10m
  # KServe's storage initializer reads the S3 keys from the predictor account's Secret, the endpoint from these.
  kubectl -n "$NS" annotate secret tlpipe-credentials --overwrite \
    "serving.kserve.io/s3-endpoint=${S3_IN_CLUSTER#http://}" serving.kserve.io/s3-usehttps=0 \
    serving.kserve.io/s3-region=us-east-1
  kubectl kustomize manifests/kserve | sed "s|image: tlpipe/train:.*|image: $IMAGE_PREFIX/train:$IMAGE_TAG|" \
    | kubectl apply -f -
}

start_forwards() {
  say "port-forwards (logs in $STATE/)"
  stop_forwards
  mkdir -p "$STATE"
  local spec name ns target ports
  for spec in "kfp kubeflow svc/ml-pipeline-ui $KFP_PORT:80" "mlflow $NS svc/mlflow $MLFLOW_PORT:5000" \
              "s3 kubeflow svc/seaweedfs $S3_PORT:8333"; do
    read -r name ns target ports <<<"$spec"
    nohup kubectl -n "$ns" port-forward "$target" "$ports" >"$STATE/forward-$name.log" 2>&1 &
    echo $! >"$STATE/forward-$name.pid"
  done
  sleep 3
}

stop_forwards() {
  local pidfile
  for pidfile in "$STATE"/forward-*.pid; do
    [[ -f $pidfile ]] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

print_next() {
  cat <<TEXT

KFP UI      http://127.0.0.1:$KFP_PORT
MLflow UI   http://127.0.0.1:$MLFLOW_PORT
S3 (SeaweedFS, KFP's store)  http://127.0.0.1:$S3_PORT   buckets: s3://tlpipe (data), s3://mlflow (artifacts)

Next:
  source $STATE/cluster.env                       # S3/MLflow variables for the CLI (through the port-forwards)
  .venv/bin/tlpipe data upload examples/fish-egu2017-demo/images s3://tlpipe/datasets/fish
  .venv/bin/tlpipe compile -o pipeline.yaml --image-prefix $IMAGE_PREFIX --image-tag $IMAGE_TAG
  .venv/bin/tlpipe upload pipeline.yaml --host http://127.0.0.1:$KFP_PORT
  .venv/bin/tlpipe run --host http://127.0.0.1:$KFP_PORT --experiment fish-classification \\
      -p data_uri=s3://tlpipe/datasets/fish -p spark_backend=k8s -p image_size=96 -p epochs=2 \\
      -p preprocess_cpu=1 -p preprocess_memory=2G -p train_cpu=2 -p train_memory=4G
  manifests/quickstart.sh smoke                   # optional: a SparkApplication on the tlpipe/spark image
  .venv/bin/tlpipe deploy                         # with WITH_KSERVE=1: serve the champion (InferenceService)
  manifests/kserve/sample-request.sh IMAGE.jpg    # ask it for a label
  manifests/quickstart.sh down                    # delete everything
TEXT
}

up() {
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  need helm "https://helm.sh/docs/intro/install/"
  create_cluster
  if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    say "images $IMAGE_PREFIX/{base,spark,train,mlflow}:$IMAGE_TAG -> $CLUSTER"
    docker/build.sh --prefix "$IMAGE_PREFIX" --tag "$IMAGE_TAG" --load "$CLUSTER" --cluster "$NAME" \
      base spark train mlflow
  fi
  install_kfp
  kubectl apply -f manifests/tlpipe/namespace.yaml   # the operator's job namespace must exist first
  install_spark_operator
  create_secrets
  apply_tlpipe
  if [[ ${WITH_KSERVE:-0} == 1 ]]; then install_kserve; fi
  start_forwards
  print_next
}

smoke() {
  say "SparkApplication tlpipe-spark-smoke in $NS"
  kubectl -n "$NS" delete sparkapplication tlpipe-spark-smoke --ignore-not-found
  kubectl kustomize manifests/spark-smoke | sed "s|image: tlpipe/spark:.*|image: $IMAGE_PREFIX/spark:$IMAGE_TAG|" \
    | kubectl apply -f -
  kubectl -n "$NS" wait sparkapplication/tlpipe-spark-smoke --timeout=600s \
    --for=jsonpath='{.status.applicationState.state}'=COMPLETED
  kubectl -n "$NS" logs tlpipe-spark-smoke-driver | grep "tlpipe \["
}

down() {
  stop_forwards
  case "$CLUSTER" in
    kind) kind delete cluster --name "$NAME" ;;
    minikube) minikube delete --profile "$NAME" ;;
  esac
  rm -rf "$STATE"
}

case "${1:-}" in
  up) up ;;
  smoke) smoke ;;
  forward) start_forwards; print_next ;;
  down) down ;;
  *) sed -n '2,14p' "$SELF" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
