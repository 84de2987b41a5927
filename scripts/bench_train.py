"""Measure the training step of the GSVA model (seconds per step, split in phases) and its peak RSS.

The model is assembled by ``build_gsva`` from a config, with random weights, at the dimensions of
the authors' tiny CPU reference (``/work/shared/bench/tiny_dims.json``, fp32): LLaMA 256x4, 4 heads,
vocabulary 32000 + [SEG] [REJ] <im_start> <im_end>; CLIP 128x2 at 224 px, patch 14; SAM ViT 128x2
at 1024 px with the standard prompt encoder and mask decoder; LoRA r=8 (alpha 16, dropout 0.05) on
q/v; the trainable-parameter policy of ``apply_trainable_policy``; gradient checkpointing on (as the
reference) unless ``--gradient-checkpointing off``. The tokenizer is a BPE of exactly 32000 entries
trained locally (LLaMA's size; no download).

One step is a micro-batch of 2 COCO-sized (640x480) images with ``--targets`` expressions each (5 by
default: 7 present targets answered [SEG] and 3 absent ones answered [REJ] over the two images),
phrased at random as in training by ``SampleBuilder.segmentation`` and collated by ``Collator``. The
optimizer is a plain ``torch.optim.AdamW(lr=3e-4, betas=(0.9, 0.95), weight_decay=0)`` on the
trainable parameters (what the reference used on the CPU; DeepSpeed is not needed for this timing).
After one warm-up step, ``--steps`` steps (at least 3) are timed, each split into:

- ``data``: building the two samples (resize, tokenise, masks) and collating them;
- ``forward``: ``losses = model(batch)`` (``GsvaLosses``);
- ``backward``: ``losses.total.backward()``;
- ``optimizer``: ``optimizer.step()`` and ``optimizer.zero_grad(set_to_none=True)``.

Every step uses new images (the same images for every configuration and run of a given seed), so
the losses of each step are printed for equal-loss checks between versions. The peak RSS is
``ru_maxrss`` of the measuring process. Each ``--targets`` value runs in a fresh subprocess so that
its peak RSS is its own. One JSON object is printed on stdout (progress goes to stderr). Timings on
a machine that other processes keep busy are slower and noisier: the load average is reported.

Reference: the authors' code at these dims and this shape on the 2-core CPU this was written on:
26.4 s per step (forward 11.6, backward 13.0, optimizer 1.9), 3.3 GB peak RSS.
Target: <= 13 s per step without a feature cache.

    python scripts/bench_train.py                          # reference shape, about 2-3 minutes on 2 cores
    python scripts/bench_train.py --targets 1 5 10         # sweep of targets per image
    python scripts/bench_train.py --gradient-checkpointing off
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from gsva.data.conversation import get_template
from gsva.data.prompts import ANSWERS, TRAIN_QUESTIONS, format_slots, question_text
from gsva.data.sample_builder import SampleBuilder, SampleSettings, SlotTarget
from gsva.data.samples import Collator
from gsva.data.tokenizer import train_reference_bpe
from gsva.model.build import build_gsva
from gsva.model.reference_shapes import REFERENCE_VOCAB, reference_config
from gsva.special_tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER

AUTHORS_STEP_S = {"step": 26.4, "forward": 11.6, "backward": 13.0, "optimizer": 1.9}
AUTHORS_PEAK_RSS_GB = 3.3
TARGET_STEP_S = 13.0
IMAGES_PER_STEP = 2
IMAGE_HEIGHT, IMAGE_WIDTH = 480, 640
ABSENT_PER_STEP = {1: 0, 5: 3}
"""Absent targets per micro-batch (answered [REJ]); other counts: 30 % of the targets, rounded."""



# ----------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", type=int, default=[5],
                        help="expressions per image (micro-batch of 2 images); several values = a sweep, each "
                             "in a fresh subprocess (default 5: the reference, 7 [SEG] + 3 [REJ] per step)")
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on",
                        help="activation checkpointing of the LLM decoder layers (default on, as the reference)")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps after the one warm-up step (default 3, at least 3)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch intra-op threads (default: the cores this process may use)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, images, expressions and phrasing")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_train"),
                        help="where the 32000-entry tokenizer is written (reused when already there)")
    parser.add_argument("--one", type=int, default=None, metavar="TARGETS",
                        help="internal: time one configuration in this process and print its JSON")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be >= 3")
    if args.threads < 1 or min(args.targets) < 1:
        parser.error("--threads and every --targets value must be >= 1")
    return args


# ----------------------------------------------------------------- data
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange", "pink", "grey")
NOUNS = ("man", "woman", "person", "kid", "dog", "cat", "horse", "car", "bus", "chair", "table", "umbrella",
         "pizza", "bottle", "cup", "laptop", "bowl", "banana", "plant", "bench")
PLACES = ("on the left", "on the right", "in the middle", "in front", "in the back", "closest to us")


def random_expression(rng: random.Random) -> str:
    """A short referring expression (colour, noun, place: about four words)."""
    return f"{rng.choice(COLOURS)} {rng.choice(NOUNS)} {rng.choice(PLACES)}"


def make_image(step: int, image_index: int, seed: int, exists: list[bool]) -> tuple[np.ndarray, list[SlotTarget]]:
    """(480, 640, 3) uint8 RGB image and one target per ``exists`` entry (an empty mask when absent)."""
    rng = np.random.default_rng([seed, step, image_index])
    text_rng = random.Random(f"{seed}/{step}/{image_index}")
    background = rng.integers(0, 256, (IMAGE_HEIGHT // 32, IMAGE_WIDTH // 32, 3), dtype=np.uint8)
    image = cv2.resize(background, (IMAGE_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_CUBIC)
    targets = []
    for present in exists:
        mask = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
        if present:
            centre = (int(rng.integers(60, IMAGE_WIDTH - 60)), int(rng.integers(60, IMAGE_HEIGHT - 60)))
            axes = (int(rng.integers(15, 120)), int(rng.integers(15, 120)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
            image[mask.astype(bool)] = rng.integers(0, 256, 3, dtype=np.uint8)
        targets.append(SlotTarget(text=random_expression(text_rng), mask=mask.astype(bool), exists=present))
    return image, targets


def slot_layout(targets_per_image: int) -> list[list[bool]]:
    """Present/absent flags of the targets of the two images of a step: at 5 targets, 7 present and
    3 absent in all (4+1 and 3+2), as the reference step."""
    total = IMAGES_PER_STEP * targets_per_image
    absent = ABSENT_PER_STEP.get(targets_per_image, round(0.3 * total))
    flags = [index >= absent for index in range(total)]  # the first ``absent`` slots are absent
    per_image = [flags[index::IMAGES_PER_STEP] for index in range(IMAGES_PER_STEP)]  # spread over the images
    return per_image


def tokenizer_corpus(seed: int) -> list[str]:
    """Rendered training conversations (their words become single tokens) followed by about 100 k
    distinct pseudo-words, so that BPE training reaches exactly 32000 entries."""
    template = get_template("llava_v1")
    rng = random.Random(seed)
    texts = []
    for _ in range(300):
        names = [random_expression(rng) for _ in range(rng.randint(1, 10))]
        exists = [rng.random() > 0.3 for _ in names]
        question = question_text(names, rng.choice(TRAIN_QUESTIONS), IMAGE_PLACEHOLDER)
        answer = rng.choice(ANSWERS).format(slots=format_slots(names, exists))
        texts.append(template.render([(question, answer)]).text)
    return texts


def prepare_tokenizer(work_dir: Path, seed: int) -> Path:
    """Train (once) the 32000-entry BPE into ``work_dir/tokenizer`` and return the directory."""
    return train_reference_bpe(tokenizer_corpus(seed), REFERENCE_VOCAB, work_dir / "tokenizer", seed)


# ----------------------------------------------------------------- one configuration (child process)
def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    targets_per_image = args.one
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = reference_config("tiny", args.work_dir / "tokenizer", "fp32", args.seed, args.gradient_checkpointing == "on")
    tokenizer, model, prompts = build_gsva(cfg)
    model.train()
    build_s = time.perf_counter() - start
    peak_after_build = _peak_rss_mib()
    builder = SampleBuilder(tokenizer, prompts, SampleSettings(sam_image_size=1024, clip_image_size=224, max_tokens=1024))
    collate = Collator(tokenizer.pad_token_id, cfg.data.sam_image_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0)
    layout = slot_layout(targets_per_image)
    torch.manual_seed(args.seed)  # LoRA dropout: the same masks in every run, for equal-loss checks

    def step(index: int) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        seconds = {}
        begin = time.perf_counter()
        rng = random.Random(f"{args.seed}/phrasing/{index}")
        samples = []
        for image_index, exists in enumerate(layout):
            image, targets = make_image(index, image_index, args.seed, exists)
            samples.append(builder.segmentation(image, targets, rng, {"image_id": f"{index}/{image_index}"}))
        batch = collate(samples)
        seconds["data"] = time.perf_counter() - begin
        begin = time.perf_counter()
        losses = model(batch)
        seconds["forward"] = time.perf_counter() - begin
        begin = time.perf_counter()
        losses.total.backward()
        seconds["backward"] = time.perf_counter() - begin
        begin = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds["optimizer"] = time.perf_counter() - begin
        values = {name: float(getattr(losses, name).detach()) for name in ("total", "ce", "bce", "dice")}
        shape = {
            "conversations": int(batch.input_ids.shape[0]),
            "tokens_padded": int(batch.input_ids.shape[1]),
            "answer_tokens": int((batch.labels != IGNORE_INDEX).sum()),
            "seg": int(sum(int(e.sum()) for e in batch.slot_exists)),
            "rej": int(sum(int((~e).sum()) for e in batch.slot_exists)),
        }
        return seconds, values, shape

    warm_seconds, warm_losses, _ = step(0)
    load_before = os.getloadavg()[0]
    timed = [step(index) for index in range(1, args.steps + 1)]
    phases = ("data", "forward", "backward", "optimizer")
    mean = {name: sum(s[name] for s, _, _ in timed) / len(timed) for name in phases}
    step_s = [sum(s.values()) for s, _, _ in timed]
    return {
        "targets_per_image": targets_per_image,
        "images_per_step": IMAGES_PER_STEP,
        "gradient_checkpointing": args.gradient_checkpointing == "on",
        "steps_timed": len(timed),
        "s_per_step": round(sum(step_s) / len(step_s), 2),
        "s_per_step_without_data": round(sum(step_s) / len(step_s) - mean["data"], 2),
        "phase_s_mean": {name: round(value, 3) for name, value in mean.items()},
        "step_s": [round(value, 2) for value in step_s],
        "phase_s_per_step": [{name: round(s[name], 3) for name in phases} for s, _, _ in timed],
        "losses_per_step": [{name: round(value, 6) for name, value in v.items()} for _, v, _ in timed],
        "batch_per_step": [shape for _, _, shape in timed],
        "warmup": {"s": round(sum(warm_seconds.values()), 2), "losses": {k: round(v, 6) for k, v in warm_losses.items()}},
        "peak_rss_mib": round(_peak_rss_mib()),
        "peak_rss_during_build_mib": round(peak_after_build),
        "build_s": round(build_s, 1),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model": {
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in trainable),
            "embedding_rows": model.mllm.language_model.get_input_embeddings().weight.shape[0],
            "tokenizer_entries": len(tokenizer),
            "dims": dataclasses.asdict(cfg.model.tiny),
        },
    }


# ----------------------------------------------------------------- driver (parent)
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    wall_start = time.perf_counter()
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    if load_at_start[0] > 0.5:
        _log(f"[bench_train] warning: load average {load_at_start[0]} before the start: other processes use "
             "the CPU and the timings will be slower and noisier than on an idle machine")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    prepare_tokenizer(args.work_dir, args.seed)
    results: dict[str, Any] = {}
    model_info: dict[str, Any] = {}
    failed = False
    for targets in args.targets:
        _log(f"[bench_train] {targets} targets per image x {IMAGES_PER_STEP} images: 1 + {args.steps} steps ...")
        command = [
            sys.executable, str(Path(__file__).resolve()), "--one", str(targets), "--steps", str(args.steps),
            "--gradient-checkpointing", args.gradient_checkpointing, "--threads", str(args.threads),
            "--seed", str(args.seed), "--work-dir", str(args.work_dir),
        ]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            failed = True
            reason = "killed (out of memory?)" if child.returncode < 0 else f"exit status {child.returncode}"
            results[str(targets)] = {"error": reason, "stderr_tail": child.stderr[-2000:]}
            _log(f"[bench_train]   failed: {reason}\n{child.stderr[-2000:]}")
            continue
        results[str(targets)] = json.loads(child.stdout.strip().splitlines()[-1])
        model_info = results[str(targets)].pop("model")
        _log(f"[bench_train]   {results[str(targets)]['s_per_step']} s/step")
    reference = results.get("5", {})
    report = {
        "device": "cpu",
        "precision": "fp32",
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average_at_start": load_at_start,
        "model": model_info,
        "optimizer": "torch.optim.AdamW(lr=3e-4, betas=(0.9, 0.95), weight_decay=0) on the trainable parameters",
        "data": {"image_size_hw": [IMAGE_HEIGHT, IMAGE_WIDTH], "images_per_step": IMAGES_PER_STEP,
                 "phrasing": "SampleBuilder.segmentation (training)", "feature_cache": False},
        "results": results,
        "authors_reference": {**{f"{k}_s": v for k, v in AUTHORS_STEP_S.items()}, "peak_rss_gb": AUTHORS_PEAK_RSS_GB,
                              "setting": "official code, these dims, 2 images x 5 targets (7 [SEG], 3 [REJ]), "
                                         "gradient checkpointing on, this machine"},
        "target": f"<= {TARGET_STEP_S} s per step without a feature cache (targets 5)",
        "speedup_vs_authors": round(AUTHORS_STEP_S["step"] / reference["s_per_step"], 2) if "s_per_step" in reference else None,
        "target_met": reference.get("s_per_step", float("inf")) <= TARGET_STEP_S,
        "total_wall_s": round(time.perf_counter() - wall_start, 1),
    }
    return report, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        prepare_tokenizer(args.work_dir, args.seed)
        print(json.dumps(run_one(args)))
        return 0
    report, failed = run_all(args)
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
