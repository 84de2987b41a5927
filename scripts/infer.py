"""Segment what a text names in one image or a folder of images, with free greedy generation.

    python scripts/infer.py --weights runs/x/final --image dog.jpg --expressions "left dog, red car, cow"
    python scripts/infer.py --weights W --images-dir photos/ --expressions "person, umbrella" --output-dir out/
    python scripts/infer.py --weights W --image kitchen.jpg --prompt "something I could boil water in"

For each image it prints the generated answer and, per expression, [SEG] (a mask was produced)
or [REJ] (the model says the target is absent), then writes under --output-dir/<image name>/
one mask PNG per expression (0/255, at the image size; all 0 when rejected) and overlay.png.

The model answers with the KV cache of the decoder's own generate (GsvaModel.generate), in
bf16 on a GPU and fp32 on the CPU. The prompt is built like an evaluation sample
(SampleBuilder.evaluation) whose answer part only marks where the prompt ends: its targets are
placeholders (exists=True, empty masks) that the generation never sees, no ground truth is used.
Expressions are asked all in one GSVA prompt ("Please segment a, b, c in this image."); --prompt
asks one reasoning query ("<text> Please output the segmentation mask.").
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import cv2
import numpy as np
import torch

from gsva.data.prompts import EVAL_QUESTIONS, EVAL_SINGLE_QUESTIONS
from gsva.data.sample_builder import EvalQuery, SampleBuilder, SlotTarget
from gsva.data.samples import Collator
from gsva.engine.trainer import sample_settings
from gsva.engine.visualize import PALETTE, save_overlay
from gsva.model.gsva import SlotPredictions
from gsva.model.pretrained import from_pretrained

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="model directory (model.safetensors + config.yaml, from training, save_pretrained "
                             "or scripts/export.py) or its model.safetensors")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", nargs="+", type=Path, help="one or more image files")
    source.add_argument("--images-dir", type=Path, help=f"a folder: every image in it ({', '.join(IMAGE_SUFFIXES)})")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--expressions", help='comma-separated referring expressions, e.g. "left dog, red car, cow"')
    query.add_argument("--prompt", help="one free-text (reasoning) query answered with one mask")
    parser.add_argument("--question-template", default="please",
                        help=f"--expressions: one of {sorted(EVAL_QUESTIONS)} or a template containing {{objs}}")
    parser.add_argument("--batch-size", type=int, default=4, help="images per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most tokens generated per answer")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/infer"),
                        help="masks and overlay go to <output-dir>/<image name without suffix>/")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:1 or cpu (default: cuda when available); bf16 on GPU, fp32 on CPU")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.llava_path=/models/llava")
    return parser.parse_args()


def list_images(args: argparse.Namespace) -> list[Path]:
    if args.image:
        return list(args.image)
    images = sorted(p for p in args.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images_dir}")
    return images


def make_query(args: argparse.Namespace, height: int, width: int) -> EvalQuery:
    """The one conversation asked about an image; the empty placeholder targets only shape the
    answer that marks the end of the prompt (generation cuts it off)."""
    empty = np.zeros((height, width), dtype=bool)
    if args.prompt is not None:
        texts, question = [args.prompt.strip()], EVAL_SINGLE_QUESTIONS["sentence"]
    else:
        texts = [text.strip() for text in args.expressions.split(",") if text.strip()]
        if not texts:
            raise ValueError("--expressions names no expression")
        question = EVAL_QUESTIONS.get(args.question_template, args.question_template)
        if "{objs}" not in question:
            raise ValueError(f"--question-template {args.question_template!r} must be a name or contain {{objs}}")
    return EvalQuery(targets=[SlotTarget(text, empty, True) for text in texts], question=question, metadata={})


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:48] or "expression"


def overlay(image: np.ndarray, expressions: list[str], prediction: SlotPredictions, answer: str) -> np.ndarray:
    """The image with one colour per [SEG] mask, and a legend of the decisions and the answer."""
    canvas = image.astype(np.float32)
    for index, (mask, rejected) in enumerate(zip(prediction.masks.numpy(), prediction.rejected)):
        if not rejected:
            canvas[mask] = 0.45 * canvas[mask] + 0.55 * np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
    panel = canvas.astype(np.uint8)
    scale = max(1, 256 // min(panel.shape[:2]))
    panel = cv2.resize(panel, (panel.shape[1] * scale, panel.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    lines = [(f"answer: {answer}"[:100], (0, 0, 0))] + [
        (f"{text}: {'[REJ]' if rejected else '[SEG]'}", PALETTE[index % len(PALETTE)])
        for index, (text, rejected) in enumerate(zip(expressions, prediction.rejected))
    ]
    legend = np.full((18 * len(lines) + 6, max(panel.shape[1], 400), 3), 255, np.uint8)
    for row, (line, colour) in enumerate(lines):
        cv2.putText(legend, line, (4, 14 + 18 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    padded = np.full((panel.shape[0], legend.shape[1], 3), 255, np.uint8)
    padded[:, : panel.shape[1]] = panel
    return np.concatenate([padded, legend], 0)


def report(path: Path, image: np.ndarray, expressions: list[str], prediction: SlotPredictions, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    answer = prediction.text.replace("\n", " ").strip()
    print(f"== {path}")
    print(f"answer: {answer}")
    for index, (text, rejected, mask) in enumerate(zip(expressions, prediction.rejected, prediction.masks.numpy())):
        file = out / f"mask_{index:02d}_{slug(text)}.png"
        if not cv2.imwrite(str(file), np.where(mask & (not rejected), 255, 0).astype(np.uint8)):
            raise OSError(f"could not write {file}")
        decision = "[REJ]" if rejected else f"[SEG] {int(mask.sum())} px"
        print(f"  {text}: {decision} -> {file}")
    if prediction.parse_failures:
        print(f"  note: the answer has {prediction.parse_failures} slot(s) more or fewer than expressions; missing ones count as [REJ]")
    save_overlay(out / "overlay.png", overlay(image, expressions, prediction, answer))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    weights = args.weights if Path(args.weights).is_dir() else Path(args.weights).parent
    gsva = from_pretrained(weights, [f"model.precision={precision}", *args.overrides], device=device)
    builder = SampleBuilder(gsva.tokenizer, gsva.prompts, sample_settings(gsva.cfg))
    collate = Collator(builder.pad_token_id, gsva.cfg.data.sam_image_size)
    images = list_images(args)
    for start in range(0, len(images), args.batch_size):
        paths = images[start : start + args.batch_size]
        pixels = [builder.read_image(path) for path in paths]
        queries = [make_query(args, *image.shape[:2]) for image in pixels]
        batch = collate([builder.evaluation(image, [query]) for image, query in zip(pixels, queries)])
        predictions = gsva.model.generate(batch.to(device), args.max_new_tokens, gsva.tokenizer)
        for path, image, query, prediction in zip(paths, pixels, queries, predictions):
            expressions = [target.text for target in query.targets]
            report(path, image, expressions, prediction, args.output_dir / path.stem)


if __name__ == "__main__":
    main()
