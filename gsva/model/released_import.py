"""Import the authors' released weights into the files ``eval.py`` reads (nothing else needed at run time).

    python scripts/import_weights.py --format gsva-bin --weights gsva-7b-ft-gres.bin \\
        --llava checkpoints/LLaVA-Lightning-7B-v1-1 --vision-tower checkpoints/clip-vit-large-patch14 \\
        --out runs/imported/gsva-7b-ft-gres
    python scripts/import_weights.py --format lisa-hf --weights LISA-7B-v1/ \\
        --vision-tower checkpoints/clip-vit-large-patch14 --out runs/imported/lisa-7b-v1
    python eval.py --weights runs/imported/gsva-7b-ft-gres --benchmark grefcoco:val --prompt-style gsva_release \\
        data.dataset_dir=/data

Written under ``--out``: ``llava/`` (original LLaVA layout: config.json and tokenizer from
``--llava`` — the LISA directory itself for lisa-hf — and the decoder base weights, embeddings,
lm_head and projector from the released file; LoRA is NOT merged), ``clip/`` (config from
``--vision-tower``, weights from the released file), ``sam.pth`` (segment_anything layout, type
inferred from the shapes), ``model.safetensors`` (the trainable weights: LoRA, embeddings, lm_head,
mask decoder, query projector) and ``config.yaml``. The key-mapping report is printed; any
unplaced, missing or mis-shaped key, or a tokenizer whose task-token ids differ from the rows of
the file, exits with status 1 before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from gsva.config import load_config
from gsva.text.tokenizer import add_task_tokens, load_tokenizer, task_token_strings
from gsva.model import released
from gsva.model.build import resolve_image_markers
from gsva.model.directory import CONFIG_NAME, write_config

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
LISA_ONLY_FIELDS = ("out_dim", "train_mask_decoder", "vision_pretrained", "seg_token_idx", "vision_tower")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=released.RELEASED_FORMATS,
                        help="gsva-bin: the authors' single .bin of the PEFT model; lisa-hf: LISA's merged HF directory")
    parser.add_argument("--weights", required=True, help="gsva-*.bin file, or the LISA directory")
    parser.add_argument("--llava", default=None,
                        help="LLaVA directory whose config.json and tokenizer the released model was trained from "
                             "(required for gsva-bin; default for lisa-hf: the LISA directory)")
    parser.add_argument("--vision-tower", required=True, help="local CLIP directory (its config.json is used)")
    parser.add_argument("--out", required=True, help="output directory (eval.py --weights <out>)")
    parser.add_argument("--config", default=None,
                        help="base YAML for everything not read from the weights (default: the built-in defaults)")
    parser.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha of the released run (not stored in the file)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="model.precision of the written config (the published numbers are fp32)")
    return parser.parse_args(argv)


def check_token_rows(tokenizer_dir: Path, tokens: list[str], rows: int, model_max_length: int) -> dict[str, int]:
    """Our tokenizer (as ``build_gsva`` builds it) must give the task tokens the ids of the file's rows."""
    tokenizer = load_tokenizer(tokenizer_dir, model_max_length)
    expected = released.authors_token_ids(tokenizer.get_vocab(), tokens)
    ours = add_task_tokens(tokenizer, tokens)
    problems = []
    if ours != expected:
        problems.append(f"task-token ids {ours} differ from the authors' order {expected}")
    if len(tokenizer) != rows:
        problems.append(f"the tokenizer has {len(tokenizer)} entries with {tokens}, the embedding table {rows} rows")
    if problems:
        raise released.ReleasedWeightsError(f"{tokenizer_dir}: " + "; ".join(problems))
    return ours


def run(args: argparse.Namespace) -> int:
    weights = Path(args.weights)
    llava_dir = Path(args.llava) if args.llava else (weights if args.format == "lisa-hf" else None)
    if llava_dir is None:
        print("--llava is required for --format gsva-bin", file=sys.stderr)
        return 1
    llava_config = json.loads((llava_dir / "config.json").read_text())
    for key in LISA_ONLY_FIELDS:
        llava_config.pop(key, None)

    source = released.read_released_state(weights, args.format)
    rows = released.embedding_rows(source, args.format)
    lora_r, targets = released.infer_lora(source, args.format)
    out = Path(args.out).resolve()
    cfg = load_config(args.config, [f"model.sam_checkpoint={out / 'sam.pth'}"])
    model_cfg = dataclasses.replace(
        cfg.model,
        sam_type=released.infer_sam_type(source, args.format),
        finetune="lora" if lora_r else "frozen",  # merged weights (lisa-hf) carry no adapters
        lora_r=lora_r or cfg.model.lora_r,
        lora_alpha=args.lora_alpha,
        lora_target_modules=targets or list(cfg.model.lora_target_modules),
        use_rej_token=args.format == "gsva-bin",
        seg_token_mode="shared",
        init_weights=None,
        precision=args.precision,
        gradient_checkpointing=False,
        mm_projector_init="pretrained",  # llava/ holds the released projector: it must not be redrawn
    )
    image_markers = resolve_image_markers(model_cfg.use_im_start_end, llava_config)
    tokens = task_token_strings("shared", 0, model_cfg.use_rej_token, image_markers)
    token_ids = check_token_rows(llava_dir, tokens, rows, cfg.data.model_max_length)
    llava_config["vocab_size"] = rows

    skeleton = released.model_skeleton(llava_config, args.vision_tower, model_cfg, cfg.data.sam_image_size)
    report = released.map_released_state(source, args.format, released.expected_shapes(skeleton))
    print(f"{weights} ({args.format}): sam_type {model_cfg.sam_type}, lora_r {lora_r} on {targets}, "
          f"{rows} token rows, task tokens {token_ids}")
    print(report.summary())
    if not report.ok:
        print("import refused: fix the keys above (nothing written)", file=sys.stderr)
        return 1

    paths = released.write_imported(released.mapped_state(source, report), skeleton, llava_config, args.vision_tower, out)
    for name in TOKENIZER_FILES:
        if (llava_dir / name).is_file():
            shutil.copy2(llava_dir / name, paths["llava"] / name)
    model_cfg = dataclasses.replace(
        model_cfg,
        llava_path=str(paths["llava"]),
        tokenizer_path=None,
        vision_tower_path=str(paths["clip"]),
        sam_checkpoint=str(paths["sam"]),
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)
    write_config(cfg, out / CONFIG_NAME)
    print(f"wrote {out}: llava/, clip/, sam.pth, model.safetensors, config.yaml")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (released.ReleasedWeightsError, FileNotFoundError) as error:
        print(f"import failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
