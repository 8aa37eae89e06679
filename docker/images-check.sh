#!/usr/bin/env bash
# Build tlpipe/base WITHOUT a Docker engine and import the project inside it (what `make images-check` runs).
#
# buildah (vfs storage, chroot isolation) builds docker/base/Dockerfile; the upstream base image cannot be
# pulled here, so a Debian bookworm made by `debootstrap --variant=minbase` (with python3, python3-venv) is
# imported under the upstream name and the build runs with --pull-never. pip inside the build trusts the host
# CA bundle (PIP_CERT), for networks that inspect TLS. Installs buildah/podman/debootstrap from apt if missing.
set -euo pipefail

cd "$(dirname "$0")/.."
state="${TLPIPE_HOME:-.tlpipe}/images-check"
upstream="docker.io/library/python:3.11-slim-bookworm"
image="localhost/tlpipe/base:images-check"
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

step "buildah bud docker/base/Dockerfile -> $image"
# No --layers: with vfs every cached layer is a full copy of the root filesystem; one commit per stage is
# several minutes faster and gigabytes smaller. The previous check image is replaced, not kept.
"${buildah[@]}" rmi "$image" >/dev/null 2>&1 || true
"${buildah[@]}" bud --isolation chroot --pull-never \
  --build-arg "PYTHON_IMAGE=$upstream" \
  --build-arg PIP_CERT=/etc/ssl/host-ca.crt \
  --volume "$ca_bundle:/etc/ssl/host-ca.crt:ro" \
  -f docker/base/Dockerfile -t "$image" . >"$state/build.log" 2>&1 \
  || { tail -40 "$state/build.log"; exit 1; }

step "buildah run: import components, pipelines"
container=$("${buildah[@]}" from --pull-never "$image")
trap '"${buildah[@]}" rm "$container" >/dev/null' EXIT
"${buildah[@]}" run --isolation chroot "$container" -- \
  python -c 'import os, components, pipelines, kfp; from pipelines import settings; print(f"uid {os.getuid()}: components, pipelines and kfp {kfp.__version__} import; families {settings.IMAGE_FAMILIES}")'
size=$("${buildah[@]}" images --format '{{.Size}}' "$image")
step "OK: $image, $size (build log: $state/build.log)"
