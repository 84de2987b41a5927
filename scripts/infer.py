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
asks one reasoning query ("<text> Please output the segmentation mask."). Expressions beyond the
prompt limit (data.model_max_length tokens) are left out, from the last, with a note. Loading,
prompts and masks are those of gsva.inference, which the demo page (scripts/demo_app.py) uses too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gsva.text.prompts import EVAL_QUESTIONS
from gsva.data.sample_builder import EvalQuery
from gsva.evaluation.overlays import decision_token
from gsva.inference import (
    IMAGE_SUFFIXES,
    QueryError,
    Segmenter,
    answer_line,
    default_device,
    parse_failure_note,
    write_prediction,
)
from gsva.model.gsva import SlotPredictions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--device", default=str(default_device()),
                        help="cuda, cuda:1 or cpu (default: cuda when available); bf16 on GPU, fp32 on CPU")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.llava_path=/models/llava")
    return parser.parse_args(argv)


def list_images(args: argparse.Namespace) -> list[Path]:
    if args.image:
        return list(args.image)
    images = sorted(p for p in args.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images_dir}")
    return images


def make_query(args: argparse.Namespace, segmenter: Segmenter, size: tuple[int, int]) -> EvalQuery:
    """The one conversation asked about an image of ``size`` (H, W), its expressions cut to the
    prompt limit (a note on stderr says how many were kept)."""
    reasoning = args.prompt is not None
    fitted = segmenter.ask(args.prompt if reasoning else args.expressions, reasoning, args.question_template, size)
    if fitted.note:
        print(f"note: {fitted.note}", file=sys.stderr)
    return fitted.query


def report(path: Path, image, query: EvalQuery, prediction: SlotPredictions, out: Path) -> None:
    files = write_prediction(out, image, query, prediction)
    print(f"== {path}")
    print(f"answer: {answer_line(prediction)}")
    for target, rejected, mask, file in zip(query.targets, prediction.rejected, prediction.masks, files.masks):
        decision = decision_token(rejected) + ("" if rejected else f" {int(mask.sum())} px")
        print(f"  {target.text}: {decision} -> {file}")
    note = parse_failure_note(prediction)
    if note:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    segmenter = Segmenter.load(args.weights, torch.device(args.device), args.overrides)
    images = list_images(args)
    for start in range(0, len(images), args.batch_size):
        paths = images[start : start + args.batch_size]
        pixels = [segmenter.read_image(path) for path in paths]
        try:
            queries = [make_query(args, segmenter, image.shape[:2]) for image in pixels]
        except QueryError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        predictions = segmenter.predict(pixels, queries, "generate", args.max_new_tokens)
        for path, image, query, prediction in zip(paths, pixels, queries, predictions):
            report(path, image, query, prediction, args.output_dir / path.stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
