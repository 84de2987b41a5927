"""Evaluate GSVA weights on the paper's benchmarks (metrics tables, metrics.json, records.jsonl).

    python eval.py --weights runs/tiny_synthetic/final                       # data.eval_dataset:eval_split
    python eval.py --weights W --benchmark grefcoco:val grefcoco:testA grefcoco:testB
    python eval.py --weights W --benchmark refcoco:val refcocog:test --prompt-style lisa
    python eval.py --weights W --benchmark reason_seg:val --protocol generate --max-new-tokens 512
    python eval.py --weights W --benchmark refzom:test ade20k:val --visualize 10
    deepspeed eval.py --weights W --benchmark grefcoco:val                   # images sharded over GPUs

Benchmarks: grefcoco:{val,testA,testB} (GRES), refcoco / refcoco+:{val,testA,testB} and
refcocog:{val,test} (classic RES + REC from masks), reason_seg:{val,test}, refzom:test,
ade20k:val (Table A5). The config defaults to the ``config.yaml`` saved beside the weights; its
``data.dataset_dir`` can be overridden on the command line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gsva.engine.distributed import init_distributed
from gsva.evaluation.benchmarks import parse_benchmark
from gsva.evaluation.report import evaluate_benchmark
from gsva.evaluation.scores import VARIANTS
from gsva.evaluation.settings import PROMPT_STYLES, PROTOCOLS, EvalSettings
from gsva.model.weights import resolve_weights_file
from gsva.pipeline import from_pretrained
from gsva.text.prompts import EVAL_QUESTIONS, resolve_eval_question


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="model.safetensors written by training, or its directory")
    parser.add_argument("--config", default=None, help="YAML config (default: config.yaml beside the weights)")
    parser.add_argument("--benchmark", nargs="+", default=None, metavar="DATASET:SPLIT",
                        help="benchmarks to score, e.g. grefcoco:val refcocog:test (default: data.eval_dataset:data.eval_split)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="teacher-forced",
                        help="teacher-forced: the paper's protocol (decisions read off the ground-truth answer); "
                             "generate: free greedy decoding with KV cache, answers parsed into slots")
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default="gsva",
                        help="referring benchmarks: gsva = one prompt naming all of an image's expressions (the paper); "
                             "gsva_release = the same with the exact prompt of the authors' released evaluation "
                             "(use it to reproduce their published numbers with their weights); "
                             "lisa = one classic single-target prompt per expression")
    parser.add_argument("--one-expression-per-prompt", action="store_true",
                        help="referring benchmarks: ask the gsva question once per expression instead of once per image")
    parser.add_argument("--metric-variant", choices=VARIANTS, default="gres",
                        help="GRES: gres = the benchmark's definitions; gsva = the original authors' code (both are in metrics.json)")
    parser.add_argument("--question-template", default="please",
                        help=f"gsva prompt question (Table A2): one of {sorted(EVAL_QUESTIONS)} or a custom template containing {{objs}}")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass on each rank")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per rank")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation length limit (generate protocol)")
    parser.add_argument("--visualize", type=int, default=0, help="number of overlay PNGs to write per benchmark")
    parser.add_argument("--output-dir", default=None,
                        help="folder for one sub-folder per benchmark with metrics.json, records.jsonl, overlays "
                             "(default: <weights folder>/eval); an interrupted evaluation run again with the same "
                             "folder, weights and options scores only the images it had not finished")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; do not pass by hand")
    parser.add_argument("overrides", nargs="*", help="config overrides such as data.dataset_dir=/data")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    weights = resolve_weights_file(args.weights)
    device = init_distributed()
    pipeline = from_pretrained(weights, args.overrides, device, config_file=args.config)
    cfg = pipeline.cfg
    specs = args.benchmark or [f"{cfg.data.eval_dataset}:{cfg.data.eval_split}"]
    benchmarks = [parse_benchmark(spec) for spec in specs]
    builder = pipeline.builder.with_prompts(eval_question=resolve_eval_question(args.question_template))
    settings = EvalSettings(
        protocol=args.protocol,
        prompt_style=args.prompt_style,
        one_expression_per_prompt=args.one_expression_per_prompt,
        metric_variant=args.metric_variant,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_new_tokens=args.max_new_tokens,
        visualize=args.visualize,
        output_root=str(Path(args.output_dir) if args.output_dir else weights.parent / "eval"),
        weights=str(weights),
    )
    for benchmark in benchmarks:
        evaluate_benchmark(pipeline.model, builder, benchmark, cfg.data.dataset_dir, settings, device)


if __name__ == "__main__":
    main()
