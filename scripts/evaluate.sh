#!/usr/bin/env bash
# Evaluate GSVA weights on the paper's benchmarks, images sharded over the GPUs of one node.
#   WEIGHTS=runs/gsva_vicuna7b_ft_grefcoco/final DATASET_DIR=/data/gsva bash scripts/evaluate.sh
#   BENCHMARKS="refcoco:val refcoco:testA refcoco:testB refcocog:val refcocog:test" WEIGHTS=... bash scripts/evaluate.sh
# PROTOCOL (teacher-forced | generate) may be set; extra arguments go to eval.py (e.g. --prompt-style lisa).
source "$(dirname "$0")/_launch.sh"
WEIGHTS=${WEIGHTS:?set WEIGHTS to a model.safetensors or its directory}
BENCHMARKS=${BENCHMARKS:-grefcoco:val grefcoco:testA grefcoco:testB}
PROTOCOL=${PROTOCOL:-teacher-forced}
# shellcheck disable=SC2086  # BENCHMARKS is a list of words
deepspeed "${LAUNCH[@]}" eval.py --weights "$WEIGHTS" --benchmark $BENCHMARKS --protocol "$PROTOCOL" \
  "$@" data.dataset_dir="$DATASET_DIR"
