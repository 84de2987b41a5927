"""Train GSVA (and evaluate it at the end).

    python train.py                                   # tiny demo on CPU: data, components, GSVA, eval
    deepspeed train.py --config configs/pretrain/gsva_vicuna7b.yaml
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 train.py --config configs/tiny_synthetic.yaml
    python train.py optim.lr=1e-4 schedule.steps=100  # dotted overrides of any config key
"""

from __future__ import annotations

import argparse
import logging
import sys

from gsva.config import load_config
from gsva.data.catalog import check_dataset_names
from gsva.demo.prepare import prepare_demo
from gsva.distributed import is_main
from gsva.engine.trainer import train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_synthetic.yaml", help="YAML config (default: the tiny CPU demo)")
    parser.add_argument(
        "--resume",
        default=None,
        help='continue from a DeepSpeed checkpoint: "auto" = the latest complete one under <output_dir>/checkpoints '
        '(starts from the beginning when there is none yet, so a preemptible job can always pass it), or a directory',
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end of training")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; do not pass by hand")
    parser.add_argument("overrides", nargs="*", help="config overrides such as optim.lr=1e-4 run.output_dir=runs/x")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = [*args.overrides, *(["eval.at_end=false"] if args.no_eval else [])]
    cfg = load_config(args.config, overrides)
    check_dataset_names(cfg)  # before the demo's data and components are prepared
    cfg = prepare_demo(cfg)  # the CPU demo's data and components, when asked
    result = train(cfg, resume=args.resume)
    if result.stopped_by is not None and is_main():
        print(
            f"stopped by {result.stopped_by} after step {result.steps}; checkpoint saved in {result.weights}. "
            "Continue with the same command and --resume auto",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
