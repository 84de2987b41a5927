"""Import the authors' released weights into the files ``eval.py`` reads (nothing else needed at run time).

    python scripts/import_weights.py --format gsva-bin --weights gsva-7b-ft-gres.bin \\
        --llava checkpoints/LLaVA-Lightning-7B-v1-1 --vision-tower checkpoints/clip-vit-large-patch14 \\
        --out runs/imported/gsva-7b-ft-gres
    python scripts/import_weights.py --format lisa-hf --weights LISA-7B-v1/ \\
        --vision-tower checkpoints/clip-vit-large-patch14 --out runs/imported/lisa-7b-v1
    python eval.py --weights runs/imported/gsva-7b-ft-gres --benchmark grefcoco:val --prompt-style gsva_release \\
        data.dataset_dir=/data

Written under ``--out``: ``llava/``, ``clip/``, ``sam.pth``, ``model.safetensors`` and
``config.yaml`` (``gsva.model.released_import``). The key-mapping report is printed; any unplaced,
missing or mis-shaped key, or a tokenizer whose task-token ids differ from the rows of the file,
exits with status 1 before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gsva.model.released import RELEASED_FORMATS, ReleasedWeightsError
from gsva.model.released_import import ImportRequest, import_released


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=RELEASED_FORMATS,
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    request = ImportRequest(
        fmt=args.format,
        weights=Path(args.weights),
        vision_tower=Path(args.vision_tower),
        out=Path(args.out),
        llava=Path(args.llava) if args.llava else None,
        config=Path(args.config) if args.config else None,
        lora_alpha=args.lora_alpha,
        precision=args.precision,
    )
    try:
        out = import_released(request)
    except (ReleasedWeightsError, FileNotFoundError) as error:
        print(f"import failed: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}: llava/, clip/, sam.pth, model.safetensors, config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
