#!/usr/bin/env bash
# Runs one command on every worker of a Cloud TPU VM pod slice (gcloud ssh --worker=all).
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- python -m launch.train --config=configs/stage3.py:7b \
#       --workdir=gs://bucket/run1 --config.mesh.fsdp=-1
#
# Every worker runs the same command in $OMNIHUMAN_REMOTE_DIR (default: omnihuman-jax in the remote
# home); JAX detects the pod and calls jax.distributed.initialize() (launch/distributed.py).
# Each argument is quoted with printf %q before it crosses ssh, so a config value or a path reaches the
# remote program as exactly one argument and is never interpreted by the remote shell.
# Environment: GCLOUD (default gcloud), GCLOUD_PROJECT (optional --project), OMNIHUMAN_REMOTE_DIR.
set -euo pipefail

usage() {
  echo "usage: $0 TPU_NAME ZONE -- COMMAND [ARG...]" >&2
  exit 2
}

[[ $# -ge 4 ]] || usage
tpu_name=$1
zone=$2
shift 2
[[ $1 == "--" ]] || usage
shift

remote_dir=${OMNIHUMAN_REMOTE_DIR:-omnihuman-jax}
remote_cmd="cd $(printf '%q' "$remote_dir") &&"
for arg in "$@"; do
  remote_cmd+=" $(printf '%q' "$arg")"
done

project_args=()
if [[ -n ${GCLOUD_PROJECT:-} ]]; then
  project_args=(--project="$GCLOUD_PROJECT")
fi

exec "${GCLOUD:-gcloud}" compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" "${project_args[@]}" \
  --worker=all --command="$remote_cmd"
