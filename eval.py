"""Evaluate GSVA weights on a gRefCOCO-format split (GRES metrics and trivial baselines).

    python eval.py --weights runs/tiny_synthetic/final --split val
    python eval.py --weights W --split val --protocol generate --visualize 10
    deepspeed eval.py --config configs/... --weights W --split testA   # shards over GPUs

The config defaults to the ``config.yaml`` saved beside the weights.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from gsva.config import load_config
from gsva.data.refer import ReferIndex
from gsva.data.prompts import EVAL_QUESTIONS, resolve_eval_question
from gsva.data.sample_builder import SampleBuilder
from gsva.engine.distributed import init_distributed
from gsva.engine.evaluator import PROTOCOLS, EvalSettings
from gsva.engine.report import evaluate_split
from gsva.engine.trainer import sample_settings
from gsva.metrics import VARIANTS
from gsva.model.build import build_gsva
from gsva.model.weights import load_trainable_weights, resolve_weights_file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="model.safetensors written by training, or its directory")
    parser.add_argument("--config", default=None, help="YAML config (default: config.yaml beside the weights)")
    parser.add_argument("--split", default="val", help="split of the dataset in data.dataset_dir (val, testA, testB, ...)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="teacher-forced",
                        help="teacher-forced: the paper's GRES protocol; generate: free greedy decoding with KV cache")
    parser.add_argument("--metric-variant", choices=VARIANTS, default="gres",
                        help="gres: the benchmark's definitions; gsva: the original authors' code (both are in metrics.json)")
    parser.add_argument("--question-template", default="please",
                        help=f"evaluation question: one of {sorted(EVAL_QUESTIONS)} or a custom template containing {{objs}}")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass on each rank")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation length limit (generate protocol)")
    parser.add_argument("--visualize", type=int, default=0, help="number of overlay PNGs to write")
    parser.add_argument("--output-dir", default=None, help="where metrics.json, records.jsonl, overlays go (default: beside the weights)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; do not pass by hand")
    parser.add_argument("overrides", nargs="*", help="config overrides such as data.dataset_dir=/data")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    weights = resolve_weights_file(args.weights)
    cfg = load_config(args.config or weights.parent / "config.yaml", args.overrides)
    device = init_distributed()
    tokenizer, model, prompts = build_gsva(cfg)
    load_trainable_weights(model, weights)
    prompts = replace(prompts, eval_question=resolve_eval_question(args.question_template))
    output_dir = args.output_dir or str(weights.parent / f"eval_{args.split}_{args.protocol}")
    settings = EvalSettings(
        protocol=args.protocol,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        visualize=args.visualize,
        output_dir=output_dir,
    )
    index = ReferIndex(Path(cfg.data.dataset_dir), cfg.data.eval_dataset)
    builder = SampleBuilder(tokenizer, prompts, sample_settings(cfg))
    evaluate_split(model.to(device), builder, index, args.split, settings, device, variant=args.metric_variant)


if __name__ == "__main__":
    main()
