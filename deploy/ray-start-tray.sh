#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Start Ray on one GB200 NVL72 compute tray (4 GPUs) and label it with its NVLink domain, so that
# `vllm-helix serve-ray` keeps every Helix rank inside one rack.
#
#   head (a tray, or a CPU-only node with --num-gpus 0):  deploy/ray-start-tray.sh --head
#   every other tray:                                     deploy/ray-start-tray.sh --address HEAD_IP:6379
#
# Labels set on the node:
#   ray.io/gpu-domain=<NVLink clique>  from $NVIDIA_GPU_CLIQUE (Kubernetes: the value of the GFD node
#                                      label nvidia.com/gpu.clique, see kuberay-rayservice-nvl72.yaml),
#                                      else nvidia-smi's fabric.clusterUuid + fabric.cliqueId (the same
#                                      "<ClusterUUID>.<CliqueId>" form as GFD), else --domain.
#   ray.io/accelerator-type=GB200      override with ACCELERATOR_TYPE.
#
# Every port is explicit (open them between trays on the cluster network only). The dashboard binds to
# 127.0.0.1 unless DASHBOARD_HOST says otherwise; reach it with `ssh -L 8265:127.0.0.1:8265 head`.
# Environment overrides: NODE_IP, NUM_GPUS (4), RAY_PORT (6379), DASHBOARD_HOST (127.0.0.1),
# DASHBOARD_PORT (8265), NODE_MANAGER_PORT (6380), OBJECT_MANAGER_PORT (6381), RUNTIME_ENV_AGENT_PORT
# (6382), DASHBOARD_AGENT_GRPC_PORT (6383), DASHBOARD_AGENT_LISTEN_PORT (6384), METRICS_EXPORT_PORT
# (6385), RAY_CLIENT_SERVER_PORT (10001, head), MIN_WORKER_PORT/MAX_WORKER_PORT (10002/10999),
# ACCELERATOR_TYPE (GB200), EXTRA_LABELS (k=v,...). Extra arguments after `--` go to `ray start` unchanged.
set -euo pipefail

usage() { sed -n '3,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

role="" address="" domain="${NVIDIA_GPU_CLIQUE:-}" dry_run=0 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --head) role=head; shift ;;
    --address) role=worker; address="$2"; shift 2 ;;
    --domain) domain="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
[[ -n "$role" ]] || { echo "give --head or --address HEAD_IP:PORT" >&2; usage 2; }

NUM_GPUS="${NUM_GPUS:-4}"
NODE_IP="${NODE_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
[[ -n "$NODE_IP" ]] || { echo "cannot find this node's IP: set NODE_IP" >&2; exit 2; }

clique_from_nvidia_smi() {
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  # one line per GPU: "<ClusterUUID>, <CliqueId>"; all GPUs of a tray must agree
  nvidia-smi --query-gpu=fabric.clusterUuid,fabric.cliqueId --format=csv,noheader 2>/dev/null \
    | awk -F', *' '$1 != "" && $1 != "N/A" && $2 != "N/A" {print $1 "." $2}' | sort -u
}

if [[ -z "$domain" && "$NUM_GPUS" != 0 ]]; then
  found="$(clique_from_nvidia_smi || true)"
  if [[ $(printf '%s\n' "$found" | grep -c .) -gt 1 ]]; then
    echo "GPUs of this tray report different NVLink cliques:" >&2; echo "$found" >&2; exit 1
  fi
  domain="$found"
fi
if [[ -z "$domain" && "$NUM_GPUS" != 0 ]]; then
  echo "no NVLink clique found (NVIDIA_GPU_CLIQUE unset, nvidia-smi reports none; is IMEX/fabric up?)." >&2
  echo "Pass --domain NAME to label this tray by hand (every tray of one rack gets the same NAME)." >&2
  exit 1
fi

labels="${EXTRA_LABELS:-}"  # e.g. EXTRA_LABELS=vllm-helix.io/role=api on the head (serve-ray --launcher-label)
if [[ "$NUM_GPUS" != 0 ]]; then
  labels="ray.io/accelerator-type=${ACCELERATOR_TYPE:-GB200}${labels:+,$labels}"
fi
[[ -n "$domain" ]] && labels="ray.io/gpu-domain=${domain}${labels:+,$labels}"
label_args=()
[[ -n "$labels" ]] && label_args=(--labels="$labels")

args=(
  --node-ip-address="$NODE_IP"
  --num-gpus="$NUM_GPUS"
  "${label_args[@]}"
  --node-manager-port="${NODE_MANAGER_PORT:-6380}"
  --object-manager-port="${OBJECT_MANAGER_PORT:-6381}"
  --runtime-env-agent-port="${RUNTIME_ENV_AGENT_PORT:-6382}"
  --dashboard-agent-grpc-port="${DASHBOARD_AGENT_GRPC_PORT:-6383}"
  --dashboard-agent-listen-port="${DASHBOARD_AGENT_LISTEN_PORT:-6384}"
  --metrics-export-port="${METRICS_EXPORT_PORT:-6385}"
  --min-worker-port="${MIN_WORKER_PORT:-10002}"
  --max-worker-port="${MAX_WORKER_PORT:-10999}"
  --disable-usage-stats
  --block
)
if [[ "$role" == head ]]; then
  args=(--head --port="${RAY_PORT:-6379}" --ray-client-server-port="${RAY_CLIENT_SERVER_PORT:-10001}"
        --include-dashboard=true --dashboard-host="${DASHBOARD_HOST:-127.0.0.1}"
        --dashboard-port="${DASHBOARD_PORT:-8265}" "${args[@]}")
else
  args=(--address="$address" "${args[@]}")
fi

echo "ray start ${args[*]} ${extra[*]:-}" >&2
[[ "$dry_run" == 1 ]] && exit 0
exec ray start "${args[@]}" "${extra[@]}"
