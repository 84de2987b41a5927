#!/usr/bin/env bash
# Evaluate GSVA weights on gRefCOCO val/testA/testB, images sharded over the GPUs of one node.
#   WEIGHTS=runs/gsva_vicuna7b_ft_grefcoco/final DATASET_DIR=/data/gsva bash scripts/evaluate.sh
# SPLITS and PROTOCOL (teacher-forced | generate) may be set; extra arguments go to eval.py.
source "$(dirname "$0")/_launch.sh"
WEIGHTS=${WEIGHTS:?set WEIGHTS to a model.safetensors or its directory}
SPLITS=${SPLITS:-val testA testB}
PROTOCOL=${PROTOCOL:-teacher-forced}

for SPLIT in $SPLITS; do
  deepspeed "${LAUNCH[@]}" eval.py --weights "$WEIGHTS" --split "$SPLIT" --protocol "$PROTOCOL" \
    "$@" data.dataset_dir="$DATASET_DIR"
done
