#!/usr/bin/env bash
# Finetune a pretrained GSVA on classic RES (RefCOCO/+/g and RefCLEF mixed): 50,000 steps, lr 1e-4.
#   MODEL=vicuna7b DATASET_DIR=/data/gsva PRETRAINED=runs/gsva_vicuna7b/final bash scripts/finetune_res.sh
# Several nodes: HOSTFILE=hostfile. Extra arguments are config overrides.
source "$(dirname "$0")/_launch.sh"
deepspeed "${LAUNCH[@]}" train.py --config "configs/finetune/classic_res_${MODEL}.yaml" \
  data.dataset_dir="$DATASET_DIR" model.init_weights="$PRETRAINED" "$@"
