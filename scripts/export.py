"""Export a DeepSpeed checkpoint (ZeRO stage 0/1/2) to a GSVA model directory.

    python scripts/export.py --checkpoint runs/x/checkpoints --out runs/x/export           # latest tag
    python scripts/export.py --checkpoint runs/x/checkpoints/step2000 --out runs/x/step2000
    python scripts/export.py --checkpoint runs/x/checkpoints --out runs/x/merged --merge-lora

The output holds model.safetensors (fp32 trainable weights, and a randomly initialised frozen
image projector when the run had one: model.mm_projector_init=random) + config.yaml + config.json (step,
lora_r, source) and loads with ``gsva.model.directory.from_pretrained(OUT)``,
``python eval.py --weights OUT`` and ``python scripts/infer.py --weights OUT``. With
--merge-lora, LoRA is folded into the LLM and OUT also holds llava/ (original LLaVA layout), clip/
and sam.pth, with a config (model.finetune=frozen) that points at them.
"""

from __future__ import annotations

import argparse
import logging

from gsva.engine.export import export_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="<output_dir>/checkpoints (the tag in its 'latest' file) or one step directory in it")
    parser.add_argument("--out", required=True, help="directory to write the exported model into (created)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold LoRA into the q/v weights and write a self-contained full model directory")
    parser.add_argument("--config", default=None,
                        help="the run's YAML config (default: <output_dir>/final/config.yaml, else <output_dir>/config.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.llava_path=/models/llava")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = export_checkpoint(args.checkpoint, args.out, merge_lora=args.merge_lora, config=args.config, overrides=args.overrides)
    merged = f", {result.merged_lora_modules} LoRA layers merged" if args.merge_lora else ""
    print(f"exported {result.source} (step {result.step}) -> {result.directory}: {result.num_tensors} tensors{merged}")


if __name__ == "__main__":
    main()
