#!/usr/bin/env bash
# Build and tag the tlpipe images as <prefix>/<family>:<tag>, the names `tlpipe compile --image-prefix P
# --image-tag T` writes into the pipeline (pipelines/settings.py), and optionally push them or load them
# into a kind/minikube cluster.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: docker/build.sh [--prefix P] [--tag T] [--engine docker|podman|buildah] [--push]
                       [--load kind|minikube] [--cluster NAME] [--build-arg K=V ...] [FAMILY ...]

  --prefix P     registry prefix (default: tlpipe), e.g. cr.yandex/<registry-id>/tlpipe
  --tag T        image tag (default: the project version in pyproject.toml)
  --engine E     docker, podman or buildah (default: the first one that works, in that order)
  --push         push every built image (log in to the registry first)
  --load TARGET  load the built images into a local cluster: kind (`kind load`) or minikube (`minikube image load`)
  --cluster N    kind cluster name / minikube profile (default: tlpipe)
  --build-arg K=V  passed to every build, e.g. PYTHON_IMAGE=<mirror>/python:3.11-slim-bookworm@sha256:...
  FAMILY ...     what to build (default: base spark train train-gpu mlflow); base-deps is always built first

Environment: PIP_CERT=/path/ca.pem to let pip inside the build trust a TLS-inspecting proxy;
buildah's own variables apply (STORAGE_DRIVER, BUILDAH_ISOLATION, BUILDAH_LAYERS: default true here).
USAGE
}

cd "$(dirname "$0")/.."
prefix=tlpipe
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
engine=""
push=false
load=""
cluster=tlpipe
families=()
build_args=()
while (($#)); do
  case "$1" in
    --prefix) prefix=${2%/}; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --push) push=true; shift ;;
    --load) load=$2; shift 2 ;;
    --cluster) cluster=$2; shift 2 ;;
    --build-arg) build_args+=(--build-arg "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *) families+=("$1"); shift ;;
  esac
done
((${#families[@]})) || families=(base spark train train-gpu mlflow)
for family in "${families[@]}"; do
  [[ -f docker/$family/Dockerfile ]] || { echo "no Dockerfile for image family '$family' (docker/$family/)" >&2; exit 2; }
done
case "$load" in ""|kind|minikube) ;; *) echo "--load must be kind or minikube, not '$load'" >&2; exit 2 ;; esac

if [[ -z $engine ]]; then
  if docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  elif command -v buildah >/dev/null; then engine=buildah
  else echo "no container engine: install docker, podman or buildah" >&2; exit 1
  fi
fi
case "$engine" in
  docker|podman) build=("$engine" build) ;;
  buildah) build=(buildah bud); export BUILDAH_LAYERS=${BUILDAH_LAYERS:-true} ;;
  *) echo "--engine must be docker, podman or buildah, not '$engine'" >&2; exit 2 ;;
esac
cert_args=()
if [[ -n ${PIP_CERT:-} ]]; then
  [[ $engine == docker ]] && { echo "PIP_CERT works with podman/buildah (a build volume), not docker" >&2; exit 2; }
  cert_args=(--volume "$PIP_CERT:/etc/ssl/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/host-ca.crt)
fi

image() { echo "$prefix/$1:$tag"; }
deps_image=$(image base-deps)
built=()

echo "== $engine: $deps_image (common dependency layers)"
"${build[@]}" "${cert_args[@]}" "${build_args[@]}" --target deps -f docker/base/Dockerfile -t "$deps_image" .
for family in "${families[@]}"; do
  echo "== $engine: $(image "$family")"
  target=()
  [[ $family == base ]] && target=(--target base)
  "${build[@]}" "${cert_args[@]}" "${build_args[@]}" "${target[@]}" --build-arg "DEPS_IMAGE=$deps_image" \
    -f "docker/$family/Dockerfile" -t "$(image "$family")" .
  built+=("$(image "$family")")
done

if $push; then
  for img in "${built[@]}"; do echo "== push $img"; "$engine" push "$img"; done
fi

if [[ -n $load ]]; then
  for img in "${built[@]}"; do
    echo "== load $img into $load ($cluster)"
    if [[ $load == kind && $engine == docker ]]; then
      kind load docker-image "$img" --name "$cluster"
    elif [[ $load == minikube && $engine == docker ]]; then
      minikube image load "$img" --profile "$cluster"
    else  # podman/buildah images are not in a Docker daemon: go through an archive
      archive=$(mktemp --suffix .tar)
      "$engine" push "$img" "docker-archive:$archive:$img" >/dev/null
      if [[ $load == kind ]]; then kind load image-archive "$archive" --name "$cluster"
      else minikube image load "$archive" --profile "$cluster"; fi
      rm -f "$archive"
    fi
  done
fi
echo "built: ${built[*]}"
