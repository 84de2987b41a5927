#!/usr/bin/env bash
# GSVA pretraining on the 9:6:3:1 SemSeg/RES/VQA/ReasonSeg mixture (Table A3), one node of 8 GPUs.
#   MODEL=vicuna7b DATASET_DIR=/data/gsva bash scripts/pretrain.sh
# MODEL: vicuna7b | vicuna13b | llama2_13b. Several nodes: HOSTFILE=hostfile (README, "Scaling out").
# Extra arguments are config overrides, e.g. bash scripts/pretrain.sh optim.micro_batch_size=1
source "$(dirname "$0")/_launch.sh"
deepspeed "${LAUNCH[@]}" train.py --config "configs/pretrain/gsva_${MODEL}.yaml" data.dataset_dir="$DATASET_DIR" "$@"
