"""Train GSVA (and evaluate it at the end).

    python train.py                                   # tiny demo on CPU: data, components, GSVA, eval
    deepspeed train.py --config configs/pretrain/gsva_vicuna7b.yaml
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 train.py --config configs/tiny_synthetic.yaml
    python train.py optim.lr=1e-4 schedule.steps=100  # dotted overrides of any config key
"""

from __future__ import annotations

import argparse
import logging

from gsva.config import load_config
from gsva.data.refer import ReferIndex
from gsva.data.sample_builder import SampleBuilder
from gsva.engine.evaluator import EvalSettings
from gsva.engine.report import evaluate_split
from gsva.engine.trainer import sample_settings, train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_synthetic.yaml", help="YAML config (default: the tiny CPU demo)")
    parser.add_argument(
        "--resume",
        default=None,
        help='continue from a DeepSpeed checkpoint: "auto" = latest under <output_dir>/checkpoints, or a directory',
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end of training")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; do not pass by hand")
    parser.add_argument("overrides", nargs="*", help="config overrides such as optim.lr=1e-4 run.output_dir=runs/x")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    if args.no_eval or not cfg.run.eval_at_end:
        return
    run_cfg = result.cfg
    settings = EvalSettings(
        protocol="teacher-forced",
        batch_size=8,
        visualize=run_cfg.run.num_visualizations,
        output_dir=f"{run_cfg.run.output_dir}/eval_{run_cfg.data.eval_split}",
    )
    builder = SampleBuilder(result.tokenizer, result.prompts, sample_settings(run_cfg))
    index = ReferIndex(run_cfg.data.dataset_dir, run_cfg.data.eval_dataset)
    evaluate_split(
        result.model, builder, index, run_cfg.data.eval_split, settings, result.device,
        writer=result.writer, step=result.steps,
    )


if __name__ == "__main__":
    main()
