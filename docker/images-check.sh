#!/usr/bin/env bash
# Build a tlpipe image WITHOUT a Docker engine and run it (what `make images-check` runs).
#
#   docker/images-check.sh [base|spark]
#
# base (default): buildah (vfs storage, chroot isolation) builds docker/base/Dockerfile and imports the project
#   inside the image. spark: docker/build.sh --engine buildah builds base-deps + spark, and the image's entry
#   point runs the Spark smoke job as a driver (local master) with the image's own Java and pyspark.
# The upstream base image cannot be pulled here, so a Debian bookworm made by `debootstrap --variant=minbase`
# (with python3, python3-venv) is imported under the upstream name and nothing is pulled. pip inside the build
# trusts the host CA bundle (PIP_CERT), for networks that inspect TLS. Installs buildah/podman/debootstrap
# from apt if missing.
set -euo pipefail

cd "$(dirname "$0")/.."
family=${1:-base}
case "$family" in base|spark) ;; *) echo "usage: docker/images-check.sh [base|spark]" >&2; exit 2 ;; esac
state="${TLPIPE_HOME:-.tlpipe}/images-check"
upstream="docker.io/library/python:3.11-slim-bookworm"
image="localhost/tlpipe/$family:images-check"
ca_bundle="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
buildah=(buildah --storage-driver vfs)
started=$SECONDS

step() { printf '[images-check %4ds] %s\n' "$((SECONDS - started))" "$*"; }

if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  step "installing buildah podman debootstrap (apt)"
  apt-get update -qq && apt-get install -y -qq buildah podman debootstrap >/dev/null
fi
mkdir -p "$state"

if ! "${buildah[@]}" inspect --type image "$upstream" >/dev/null 2>&1; then
  rootfs="$state/rootfs"
  step "debootstrap --variant=minbase bookworm -> $rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    >"$state/debootstrap.log" 2>&1 || { tail -20 "$state/debootstrap.log"; exit 1; }
  step "podman import as $upstream (stand-in for the upstream base image)"
  tar -C "$rootfs" -c . | podman --storage-driver vfs import --change 'CMD ["python3"]' - "$upstream" >/dev/null
  rm -rf "$rootfs"
fi

# No buildah layer cache: with vfs every cached layer is a full copy of the root filesystem; one commit per
# stage is several minutes faster and gigabytes smaller. The previous check image is replaced, not kept.
"${buildah[@]}" rmi "$image" >/dev/null 2>&1 || true
if [[ $family == base ]]; then
  step "buildah bud docker/base/Dockerfile -> $image"
  "${buildah[@]}" bud --isolation chroot --pull-never \
    --build-arg "PYTHON_IMAGE=$upstream" \
    --build-arg PIP_CERT=/etc/ssl/host-ca.crt \
    --volume "$ca_bundle:/etc/ssl/host-ca.crt:ro" \
    -f docker/base/Dockerfile -t "$image" . >"$state/build.log" 2>&1 \
    || { tail -40 "$state/build.log"; exit 1; }
  check=(python -c 'import os, tlpipe.components, tlpipe.pipelines, kfp; from tlpipe.pipelines import settings; from tlpipe.components.deploy import inference_service as i; i.validate(i.build("fish", i.Target("1", "s3://b/m"), i.DeployParams())); print(f"uid {os.getuid()}: tlpipe.components, tlpipe.pipelines and kfp {kfp.__version__} import, the kserve models validate; families {settings.IMAGE_FAMILIES}")')
else
  step "docker/build.sh --engine buildah --tag images-check spark -> $image"
  printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' \
    >"$state/storage.conf"
  CONTAINERS_STORAGE_CONF=$(realpath "$state/storage.conf") BUILDAH_ISOLATION=chroot BUILDAH_LAYERS=false PIP_CERT="$ca_bundle" \
    docker/build.sh --engine buildah --tag images-check --build-arg "PYTHON_IMAGE=$upstream" spark \
    >"$state/build.log" 2>&1 || { tail -40 "$state/build.log"; exit 1; }
  # buildah's chroot has no /etc/hosts entry for the host name (a pod has one): name the driver's host.
  check=(bash -c 'id -u; java -version 2>&1 | head -1
    SPARK_LOCAL_HOSTNAME=localhost SPARK_LOCAL_IP=127.0.0.1 SPARK_DRIVER_BIND_ADDRESS=127.0.0.1 \
      /opt/tlpipe/entrypoint.sh driver --master "local[2]" --conf spark.ui.enabled=false \
      /opt/tlpipe/spark_smoke_job.py 2>/tmp/spark.log || { tail -20 /tmp/spark.log; exit 1; }')
fi

step "buildah run: ${check[*]:0:2} …"
container=$("${buildah[@]}" from --pull-never "$image")
trap '"${buildah[@]}" rm "$container" >/dev/null' EXIT
"${buildah[@]}" run --isolation chroot "$container" -- "${check[@]}"
size=$("${buildah[@]}" images --format '{{.Size}}' "$image")
step "OK: $image, $size (build log: $state/build.log)"
