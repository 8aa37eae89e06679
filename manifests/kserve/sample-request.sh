#!/usr/bin/env bash
# Ask the InferenceService made by `tlpipe deploy` for the label of one image, through a port-forward to its
# predictor Service (RawDeployment: <name>-predictor, port 80). The runtime speaks MLflow's scoring protocol.
#   manifests/kserve/sample-request.sh photo.jpg [NAME] [NAMESPACE]    (defaults: fish-classifier tlpipe)
set -euo pipefail
image=${1:?usage: sample-request.sh IMAGE [NAME] [NAMESPACE]}
name=${2:-fish-classifier}
ns=${3:-tlpipe}
port=${PORT:-8081}
kubectl -n "$ns" port-forward "svc/$name-predictor" "$port:80" >/dev/null &
forward=$!
trap 'kill $forward' EXIT
sleep 2
printf '{"dataframe_split": {"columns": ["image"], "data": [["%s"]]}, "params": {"top_k": 3}}' \
  "$(base64 -w0 "$image")" \
  | curl -sf "http://127.0.0.1:$port/invocations" -H 'Content-Type: application/json' --data-binary @-
echo
