"""The demo page: a Gradio app that segments what a text names in an uploaded image.

    python scripts/demo_app.py                        # the demo's weights, runs/tiny_synthetic/final
    python scripts/demo_app.py --weights W --port 8080
    gsva-demo --weights W                             # the same, as installed by pip

The user uploads an image (or picks one of the examples: synthetic coloured shapes, the demo
model's domain), types referring expressions (one per line or comma-separated) or one reasoning
question, and picks a protocol. The page shows the model's answer, an overlay with one colour per
expression, a legend with each expression's ``[SEG]``/``[REJ]`` decision and mask area, and one
mask PNG per expression to download. Loading, prompts and masks are those of ``gsva.inference``
(as ``scripts/infer.py``); the protocols are described there.

Bad input (no image, a file that is not an image or is corrupt, no expression, a reserved token)
gets a message on the page; more expressions than the prompt limit are cut from the end and a
larger image than ``--max-image-side`` is shrunk, each with a note. Requests wait in Gradio's
queue and run one at a time; each builds its answer from its own inputs only.
"""

from __future__ import annotations

import argparse
import html
import logging
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import torch

from gsva.data.bad_samples import BadSampleError
from gsva.text.prompts import EVAL_QUESTIONS, resolve_eval_question
from gsva.demo.synthetic import SyntheticSpec, render_image
from gsva.evaluation.overlays import PALETTE, decision_token
from gsva.inference import (
    IMAGE_SUFFIXES,
    QueryError,
    Segmenter,
    answer_line,
    default_device,
    limit_image_side,
    parse_failure_note,
    write_prediction,
)
from gsva.model.gsva import SlotPredictions
from gsva.model.directory import CONFIG_NAME, model_directory

LOGGER = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path("runs/tiny_synthetic/final")
"""Where ``python train.py`` (the tiny demo) writes its final model."""
EXPRESSIONS, REASONING = "Referring expressions", "Reasoning question"
PROTOCOL_CHOICES = [
    ("generate: the model writes its answer", "generate"),
    ("teacher-forced: the paper's protocol, on a fixed answer", "teacher-forced"),
]
EXAMPLE_SEEDS = (3, 5, 8)
"""Seeds of the synthetic example images shown under the inputs."""
REQUEST_FILES_SECONDS = 3600
"""Mask files of a request are deleted this long after it (the page holds its own copies)."""

ABOUT = """
# GSVA: generalized referring segmentation

Upload an image (or pick an example below), name what to segment and press **Segment**. The model
answers with one `[SEG]` per expression it finds in the image (its mask is painted in the
expression's colour) and `[REJ]` for one it says is absent.

- **generate** (default): the model writes its answer freely (greedy decoding); each `[SEG]` it
  writes gets a mask.
- **teacher-forced** (the paper's evaluation protocol): no ground truth is known here, so the
  model reads a fixed answer that gives every expression a `[SEG]` slot. Each decision is the
  model's own most likely token at that slot (`[SEG]`; anything else counts as `[REJ]`), where
  the earlier slots all read `[SEG]` whatever it decided for them. The masks come from a second
  pass with every slot `[SEG]`. No text is generated: the answer shown is that fixed answer with
  each slot set to its decision.
"""

PAGE_CSS = "#preview img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
"""Small images (the demo's are 64x64) are shown enlarged, pixel for pixel."""


class PageInputError(ValueError):
    """Input the page cannot segment; the message tells the user what to do."""


@dataclass(frozen=True)
class PageSettings:
    max_image_side: int
    """Longer images are shrunk to this side before segmentation."""
    max_new_tokens: int
    question_template: str
    files_dir: Path
    """Per-request folders of mask PNGs and overlays."""


@dataclass(frozen=True)
class PageAnswer:
    """Everything one request shows."""

    status: str
    """Markdown: what was done, and the notes (expressions left out, image shrunk, ...)."""
    answer: str
    overlay: str | None
    legend: str
    """HTML table: one row per expression with its colour, decision and mask area."""
    masks: list[str]

    def as_outputs(self) -> tuple[str, str, str | None, str, list[str]]:
        return self.status, self.answer, self.overlay, self.legend, self.masks


def sentence(text: str) -> str:
    """``text`` with a capital first letter and a final full stop."""
    return text[:1].upper() + text[1:].rstrip(".") + "."


def legend_html(expressions: list[str], prediction: SlotPredictions) -> str:
    """One table row per expression: its overlay colour, its text, its decision and the pixels of
    its mask (``data-decision`` holds SEG or REJ)."""
    rows = []
    for index, (text, rejected, mask) in enumerate(zip(expressions, prediction.rejected, prediction.masks)):
        red, green, blue = PALETTE[index % len(PALETTE)]
        area = "&ndash;" if rejected else f"{int(mask.sum())} px"
        rows.append(
            f'<tr data-decision="{decision_token(rejected)[1:-1]}">'
            f'<td><span style="display:inline-block;width:1em;height:1em;background:rgb({red},{green},{blue})"></span></td>'
            f"<td>{html.escape(text)}</td><td><b>{decision_token(rejected)}</b></td><td>{area}</td></tr>"
        )
    header = "<tr><th></th><th>expression</th><th>decision</th><th>mask</th></tr>"
    return f'<table>{header}{"".join(rows)}</table>'


class DemoPage:
    """The request handlers of the page around one loaded model."""

    def __init__(self, segmenter: Segmenter, settings: PageSettings) -> None:
        self.segmenter = segmenter
        self.settings = settings

    def read_upload(self, path: str | None) -> tuple[np.ndarray, list[str]]:
        """The uploaded image (H, W, 3) uint8 RGB, shrunk to ``max_image_side``, and the notes
        about it; ``PageInputError`` when there is none or it cannot be decoded."""
        if not path:
            raise PageInputError("Upload an image first, or pick one of the examples.")
        try:
            image = self.segmenter.read_image(path)
        except BadSampleError as error:
            raise PageInputError(
                f"This file cannot be read as an image (it is corrupt, truncated or not an image). "
                f"Upload a {', '.join(suffix[1:].upper() for suffix in IMAGE_SUFFIXES)} file."
            ) from error
        shrunk = limit_image_side(image, self.settings.max_image_side)
        if shrunk.shape == image.shape:
            return image, []
        return shrunk, [
            f"The image is {image.shape[1]}×{image.shape[0]} pixels: it was shrunk to {shrunk.shape[1]}×{shrunk.shape[0]} "
            f"(at most {self.settings.max_image_side} pixels a side), and its masks have that size."
        ]

    def preview(self, path: str | None) -> tuple[str, np.ndarray | None]:
        """Handler of an upload: (status, the image as the model will see it)."""
        if not path:
            return "", None
        try:
            image, notes = self.read_upload(path)
        except PageInputError as error:
            return f"**{error}**", None
        return " ".join(notes), image

    def segment(self, path: str | None, kind: str, text: str, protocol: str) -> tuple[str, str, str | None, str, list[str]]:
        """Handler of the Segment button: (status, answer, overlay file, legend HTML, mask files).
        Input errors and failures become a message in the status; nothing is raised."""
        try:
            return self.answer(path, kind, text, protocol).as_outputs()
        except PageInputError as error:
            return f"**{error}**", "", None, "", []
        except Exception as error:  # the request boundary: the page shows a message, the log the traceback
            LOGGER.exception("segmentation failed")
            return (f"**The model failed on this request ({type(error).__name__}: {error}).** "
                    "Try another image or fewer expressions; the server log has the details."), "", None, "", []

    def answer(self, path: str | None, kind: str, text: str, protocol: str) -> PageAnswer:
        start = time.perf_counter()
        image, notes = self.read_upload(path)
        try:
            fitted = self.segmenter.ask(text or "", kind == REASONING, self.settings.question_template, image.shape[:2])
        except QueryError as error:
            raise PageInputError(sentence(str(error))) from error
        query = fitted.query
        prediction = self.segmenter.predict([image], [query], protocol, self.settings.max_new_tokens)[0]
        notes += [sentence(note) for note in (fitted.note, parse_failure_note(prediction)) if note]
        if protocol == "teacher-forced":
            notes.append("Teacher-forced: the answer is not generated; it is the fixed answer with each slot set to the model's decision.")
        files = write_prediction(self._request_folder(), image, query, prediction)
        expressions = [target.text for target in query.targets]
        done = f"{len(expressions)} expression(s), {protocol}, {time.perf_counter() - start:.2f} s."
        return PageAnswer(
            status=" ".join([done, *notes]),
            answer=answer_line(prediction),
            overlay=str(files.overlay),
            legend=legend_html(expressions, prediction),
            masks=[str(file) for file in files.masks],
        )

    def _request_folder(self) -> Path:
        """A new folder for one request's files; those of requests older than
        ``REQUEST_FILES_SECONDS`` are deleted."""
        for folder in self.settings.files_dir.iterdir():
            if folder.stat().st_mtime < time.time() - REQUEST_FILES_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        folder = self.settings.files_dir / uuid.uuid4().hex
        folder.mkdir()
        return folder


@dataclass(frozen=True)
class Example:
    """An example under the inputs: an image file and the expressions asked about it."""

    image: Path
    expressions: list[str]

    @property
    def label(self) -> str:
        return ", ".join(self.expressions)

    def inputs(self) -> list[str]:
        """The values it puts into the (image, query kind, query text) inputs."""
        return [str(self.image), EXPRESSIONS, "\n".join(self.expressions)]


def write_examples(folder: Path) -> list[Example]:
    """Synthetic images of coloured shapes (the demo model's domain) as PNGs in ``folder``, each
    asked for its colours and one colour it does not contain."""
    spec = SyntheticSpec()
    examples = []
    for seed in EXAMPLE_SEEDS:
        image, objects = render_image(np.random.default_rng(seed), spec)
        present = sorted({item.colour for item in objects}, key=spec.colours.index)
        absent = next(colour for colour in spec.colours if colour not in present)
        path = folder / f"shapes_{seed}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        examples.append(Example(path, [*present, absent]))
    return examples


def build_page(page: DemoPage, examples: list[Example]) -> gr.Blocks:
    """The Gradio page: inputs and examples on the left, the answer on the right."""
    with gr.Blocks(title="GSVA demo", analytics_enabled=False) as demo:
        gr.Markdown(ABOUT)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", type="filepath", elem_id="image-file")
                preview = gr.Image(label="Image as segmented", interactive=False, elem_id="preview", height=256)
                kind = gr.Radio([EXPRESSIONS, REASONING], value=EXPRESSIONS, label="Query", elem_id="query-kind")
                text = gr.Textbox(
                    lines=4, label="Referring expressions, one per line or comma-separated (or one question)",
                    placeholder="red\nblue shapes\nanything cyan", elem_id="query-text",
                )
                protocol = gr.Radio(PROTOCOL_CHOICES, value="generate", label="Protocol", elem_id="protocol")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                gr.Examples([example.inputs() for example in examples], inputs=[upload, kind, text],
                            example_labels=[example.label for example in examples])
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                answer = gr.Textbox(label="Model answer", interactive=False, elem_id="answer")
                overlay = gr.Image(label="Overlay", type="filepath", interactive=False, elem_id="overlay")
                legend = gr.HTML(elem_id="legend")
                masks = gr.File(label="Masks (PNG, 255 on the mask)", file_count="multiple", interactive=False, elem_id="masks")
        upload.change(page.preview, inputs=upload, outputs=[status, preview], concurrency_limit=4)
        button.click(page.segment, inputs=[upload, kind, text, protocol], outputs=[status, answer, overlay, legend, masks],
                     concurrency_limit=1)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"model directory (model.safetensors + config.yaml) or its model.safetensors "
                             f"(default: {DEFAULT_WEIGHTS}, written by `python train.py`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--device", default=str(default_device()),
                        help="cuda, cuda:1 or cpu (default: cuda when available); bf16 on GPU, fp32 on CPU")
    parser.add_argument("--max-image-side", type=int, default=2048,
                        help="larger images are shrunk to this many pixels on their longer side (default 2048)")
    parser.add_argument("--max-upload-mb", type=int, default=50, help="largest upload accepted, in MB (default 50)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens generated per answer (default 256)")
    parser.add_argument("--question-template", default="please",
                        help=f"question naming the expressions: one of {sorted(EVAL_QUESTIONS)} or a template containing {{objs}}")
    parser.add_argument("--queue-size", type=int, default=32,
                        help="requests waiting at most in the queue (they run one at a time); more are turned away")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.llava_path=/models/llava")
    return parser.parse_args(argv)


def check_weights(weights: Path | None) -> Path:
    """The model directory to serve; exits with a message saying what to do when it is missing."""
    directory = model_directory(weights or DEFAULT_WEIGHTS)
    if (directory / CONFIG_NAME).is_file():
        return directory
    if weights is None:
        sys.exit(f"no trained demo model in {DEFAULT_WEIGHTS}: run `python train.py` first (or pass --weights)")
    sys.exit(f"{weights} is not a model directory (no {CONFIG_NAME}): pass a folder written by training "
             "(<run.output_dir>/final), save_pretrained or scripts/export.py")


def main(argv: list[str] | None = None) -> None:
    """Load the model and serve the page until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    weights = check_weights(args.weights)
    try:
        resolve_eval_question(args.question_template)
    except ValueError as error:
        sys.exit(f"--question-template: {error}")
    LOGGER.info("loading %s", weights)
    segmenter = Segmenter.load(weights, torch.device(args.device), args.overrides)
    with tempfile.TemporaryDirectory(prefix="gsva-demo-") as work:
        files_dir, examples_dir = Path(work) / "requests", Path(work) / "examples"
        files_dir.mkdir()
        examples_dir.mkdir()
        settings = PageSettings(args.max_image_side, args.max_new_tokens, args.question_template, files_dir)
        demo = build_page(DemoPage(segmenter, settings), write_examples(examples_dir))
        demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
        demo.launch(server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb}mb",
                    allowed_paths=[work], footer_links=[], show_error=False, css=PAGE_CSS)
