#!/usr/bin/env bash
# Training on a Cloud TPU VM slice (v4/v5e/v5p/v6e, any size): the same command on every host.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/vit_b32.py gs://bucket/runs/vit_b32 [--config.X=Y ...]
#
# Installs clip_jax from this checkout's requirements on every worker, then
# starts clip_jax.main everywhere; jax.distributed.initialize() discovers the
# slice (clip_jax.main calls it when TPU_WORKER_HOSTNAMES lists several hosts).
# Use a gs:// workdir so all hosts share checkpoints; a restarted job resumes.
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [FLAGS...]}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir}
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/clip_jax
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/clip_jax && pip install -q -r requirements.txt -e . 'jax[tpu]' &&
  python -m clip_jax.main --config=$config --workdir=$workdir $*"
