"""Evaluate GSVA weights on the paper's benchmarks (metrics tables, metrics.json, records.jsonl).

    python eval.py --weights runs/tiny_synthetic/final                       # the config's eval.benchmarks
    python eval.py --weights W --benchmark grefcoco:val grefcoco:testA grefcoco:testB
    python eval.py --weights W --benchmark refcoco:val refcocog:test --prompt-style lisa
    python eval.py --weights W --benchmark reason_seg:val --protocol generate --max-new-tokens 512
    python eval.py --weights W --benchmark refzom:test ade20k:val --visualize 10
    deepspeed eval.py --weights W --benchmark grefcoco:val                   # images sharded over GPUs

Benchmarks: grefcoco:{val,testA,testB} (GRES), refcoco / refcoco+:{val,testA,testB} and
refcocog:{val,test} (classic RES + REC from masks), reason_seg:{val,test}, refzom:test,
ade20k:val (Table A5). The config defaults to the ``config.yaml`` saved beside the weights. Every
option comes from its ``eval:`` section; a flag overrides its key, and so does a positional
override (``eval.batch_size=4``, ``data.dataset_dir=/data``).
"""

from __future__ import annotations

import argparse
import json
import logging
import typing
from pathlib import Path

from gsva.config import EvalPromptStyle
from gsva.engine.distributed import init_distributed
from gsva.evaluation.benchmarks import parse_benchmark
from gsva.evaluation.report import evaluate_benchmark
from gsva.evaluation.scores import VARIANTS
from gsva.evaluation.settings import EvalSettings
from gsva.model.gsva import PROTOCOLS
from gsva.model.directory import resolve_weights_file
from gsva.pipeline import from_pretrained
from gsva.text.prompts import EVAL_QUESTIONS


FLAG_KEYS = {
    "benchmark": "benchmarks",
    "protocol": "protocol",
    "prompt_style": "prompt_style",
    "one_expression_per_prompt": "one_expression_per_prompt",
    "metric_variant": "metric_variant",
    "question_template": "question_template",
    "batch_size": "batch_size",
    "num_workers": "num_workers",
    "max_new_tokens": "max_new_tokens",
    "visualize": "visualize",
}
"""Each flag -> the ``eval:`` config key it overrides (unset flags leave the config's value)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="model.safetensors written by training, or its directory")
    parser.add_argument("--config", default=None, help="YAML config (default: config.yaml beside the weights)")
    parser.add_argument("--benchmark", nargs="+", default=None, metavar="DATASET:SPLIT",
                        help="benchmarks to score, e.g. grefcoco:val refcocog:test (default: eval.benchmarks)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=None,
                        help="teacher-forced: the paper's protocol (decisions read off the ground-truth answer); "
                             "generate: free greedy decoding with KV cache, answers parsed into slots (default: eval.protocol)")
    parser.add_argument("--prompt-style", choices=typing.get_args(EvalPromptStyle), default=None,
                        help="referring benchmarks: gsva = one prompt naming all of an image's expressions (the paper); "
                             "gsva_release = the same with the exact prompt of the authors' released evaluation "
                             "(use it to reproduce their published numbers with their weights); "
                             "lisa = one classic single-target prompt per expression (default: eval.prompt_style)")
    parser.add_argument("--one-expression-per-prompt", action="store_true", default=None,
                        help="referring benchmarks: ask the gsva question once per expression instead of once per image")
    parser.add_argument("--metric-variant", choices=VARIANTS, default=None,
                        help="GRES: gres = the benchmark's definitions; gsva = the original authors' code (both are in "
                             "metrics.json; default: eval.metric_variant)")
    parser.add_argument("--question-template", default=None,
                        help=f"gsva prompt question (Table A2): one of {sorted(EVAL_QUESTIONS)} or a custom template "
                             "containing {objs} (default: eval.question_template)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass on each rank (default: eval.batch_size)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per rank (default: eval.num_workers)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="generation length limit, generate protocol (default: eval.max_new_tokens)")
    parser.add_argument("--visualize", type=int, default=None, help="overlay PNGs to write per benchmark (default: eval.visualize)")
    parser.add_argument("--output-dir", default=None,
                        help="folder for one sub-folder per benchmark with metrics.json, records.jsonl, overlays "
                             "(default: <weights folder>/eval); an interrupted evaluation run again with the same "
                             "folder, weights and options scores only the images it had not finished")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; do not pass by hand")
    parser.add_argument("overrides", nargs="*", help="config overrides such as data.dataset_dir=/data or eval.batch_size=4")
    return parser.parse_args(argv)


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides of ``args``: its positional ones, then one ``eval.<key>=<value>`` per
    flag given (so a flag wins over both the file and a positional override)."""
    flags = [
        f"eval.{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None
    ]
    return [*args.overrides, *flags]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    weights = resolve_weights_file(args.weights)
    device = init_distributed()
    pipeline = from_pretrained(weights, eval_overrides(args), device, config_file=args.config)
    output_root = Path(args.output_dir) if args.output_dir else weights.parent / "eval"
    settings = EvalSettings(options=pipeline.cfg.eval, output_root=str(output_root), weights=str(weights))
    for benchmark in map(parse_benchmark, pipeline.cfg.eval.benchmarks):
        evaluate_benchmark(pipeline.model, pipeline.builder, benchmark, pipeline.cfg.data.dataset_dir, settings, device)


if __name__ == "__main__":
    main()
