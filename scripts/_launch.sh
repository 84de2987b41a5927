# Shared by the launch scripts (sourced, not run): defaults and the deepspeed launcher arguments.
# MODEL: vicuna7b | vicuna13b | llama2_13b; DATASET_DIR: the <dataset_dir>; NUM_GPUS: GPUs of this
# node; HOSTFILE: a DeepSpeed hostfile for several nodes (README, "Scaling out").
set -euo pipefail
MODEL=${MODEL:-vicuna7b}
DATASET_DIR=${DATASET_DIR:-dataset}
PRETRAINED=${PRETRAINED:-runs/gsva_${MODEL}/final}
NUM_GPUS=${NUM_GPUS:-8}
LAUNCH=(--num_gpus "$NUM_GPUS")
if [[ -n "${HOSTFILE:-}" ]]; then LAUNCH=(--hostfile "$HOSTFILE"); fi
