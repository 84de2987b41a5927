#!/usr/bin/env bash
# Finetune a pretrained GSVA on gRefCOCO: 10 full epochs, lr 1e-4 (Table A3), one node of 8 GPUs.
#   MODEL=vicuna7b DATASET_DIR=/data/gsva PRETRAINED=runs/gsva_vicuna7b/final bash scripts/finetune_grefcoco.sh
# Several nodes: HOSTFILE=hostfile. Extra arguments are config overrides.
source "$(dirname "$0")/_launch.sh"
deepspeed "${LAUNCH[@]}" train.py --config "configs/finetune/grefcoco_${MODEL}.yaml" \
  data.dataset_dir="$DATASET_DIR" model.init_weights="$PRETRAINED" "$@"
