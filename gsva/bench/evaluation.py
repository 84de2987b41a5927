"""Measure evaluation throughput (images/s) and peak memory of the GSVA model.

Both inference protocols are timed at batch sizes 1, 4 and 16 (images per batch; one
conversation per image naming all of its expressions, as the evaluator builds it). Every model
call is ``GsvaModel.predict(batch, protocol, max_new_tokens, tokenizer)`` (``gsva.model.gsva``),
the dispatch that evaluation, inference and the benchmarks share:

- ``teacher-forced``: the paper's gRefCOCO protocol (``GsvaModel.predict_teacher_forced``);
- ``generate``: free greedy decoding with KV cache (``GsvaModel.generate``).

The model is assembled by ``build_gsva`` (``gsva.model.build``) from the config of
``gsva.bench.shapes``, with random weights, at the dimensions of the authors' tiny CPU reference
(``--shape tiny``, fp32: LLaMA 256x4, 4 heads, vocabulary 32000 + [SEG] [REJ] <im_start> <im_end>;
CLIP 128x2 at 224 px, patch 14; SAM ViT 128x2 at 1024 px with the standard prompt encoder and mask
decoder; LoRA r=8 on q/v). ``--shape 7b`` / ``13b`` (bf16, CUDA only) build LLaMA-7B / -13B + CLIP
ViT-L/14 + SAM ViT-H instead, and ``--shape mid`` the 7B widths with 2 layers and the tiny SAM
encoder (runs on a CPU).

Evaluation samples are COCO-sized (640x480) images with 11 or 12 expressions each (mean 11.5,
about 30 % absent: answered [REJ]) from ``gsva.bench.workload``, built by
``SampleBuilder.evaluation`` (``gsva.data.sample_builder``: one conversation per image, the fixed
evaluation question naming every expression, as ``ReferSegDataset`` of
``gsva.data.refer_seg.dataset`` does for gRefCOCO) and collated by ``Collator``
(``gsva.data.samples``), as ``run_evaluation`` of ``gsva.evaluation.loop`` does. The tokenizer is a
BPE of exactly 32000 entries trained locally (LLaMA's size; no download).

Each (protocol, batch size) runs in a fresh subprocess so that its peak RSS (and, on CUDA, its
peak allocated memory) is its own: a warm-up call (the first image on the CPU, the first batch on
CUDA), then at least two batches timed. The model call is timed apart from building and
collating the samples. Batched predictions are compared with batch-1 predictions of the same
images. One JSON object is printed on stdout (progress goes to stderr). Timings on a machine
that other processes keep busy are slower and noisier: the load average is reported beside them.

Generated answers (``generate``) are described from what ``predict`` returns and from a forward
hook, no method of the model replaced: ``decoder_steps_per_batch`` counts the language model's
forward calls per batch (one per token generated for the longest answer of the batch, ``</s>``
included; at batch 1, exactly the tokens generated); ``mean_generated_text_tokens_per_conversation``
re-encodes each decoded answer (``SlotPredictions.text``: the tokens generated before ``</s>``)
with the tokenizer, without special tokens added (``</s>`` is not in the text, so not counted).
That count equals the tokens generated before ``</s>`` only when decoding and re-encoding
round-trip; the arbitrary token strings that random weights generate usually re-encode to more.

The authors' evaluation (``--official-dir`` with ``--official-harness``, tiny shape on the CPU):
their harness times their ``eval_gres`` path (teacher-forced with re-evaluation, batch 1) on the
val split of its gRefCOCO fixture at the same dims and threads, right after ours, and the report
gives the ratio of our teacher-forced images/s at each batch size to theirs.

    python scripts/bench_eval.py                      # CPU, tiny shape, about 10-15 minutes on 2 cores
    python scripts/bench_eval.py --protocols teacher-forced --batch-sizes 1 --images 8   # ~1 minute
    python scripts/bench_eval.py --official-dir D --official-harness H --protocols teacher-forced --batch-sizes 1 8
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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from gsva.batch import GsvaBatch
from gsva.bench.authors import AuthorsHarness, add_arguments, ratio
from gsva.bench.shapes import CPU_SHAPES, SHAPES, build_reference_model
from gsva.bench.workload import IMAGE_HEIGHT, IMAGE_WIDTH, log, make_image, peak_rss_mib, prepare_tokenizer, rss_mib
from gsva.config import Config
from gsva.data.sample_builder import EvalQuery, SampleBuilder, SampleSettings, SlotTarget
from gsva.data.samples import Collator, ImageSample
from gsva.model.gsva import PROTOCOLS, GsvaModel, SlotPredictions
from gsva.text.prompts import EVAL_QUESTIONS, PromptSettings
from gsva.text.special_tokens import IGNORE_INDEX, REJ_TOKEN, SEG_TOKEN

TIMING_NOTE = (
    "images_per_s counts the model call only (batch already collated); images_per_s_with_data adds "
    "building + collating the samples in the same process; stage_s_per_image splits the model call "
    "('other': lm_head, splicing, mask post-processing, generation bookkeeping). With random weights "
    "generation emits no [SEG] (see generated_seg_per_conversation), so the generate timings carry no "
    "mask decoding: add the teacher-forced mask_decoder time for a trained model"
)
GENERATION_NOTE = (
    "decoder_steps_per_batch: forward calls of the language model per timed batch, one per token "
    "generated for the longest answer of the batch, </s> included (at batch 1: exactly the tokens "
    "generated). mean_generated_text_tokens_per_conversation: the decoded answer (SlotPredictions.text, "
    "the tokens generated before </s>) re-encoded by the tokenizer without special tokens added, </s> "
    "not counted; it equals the tokens generated before </s> only when decoding and re-encoding "
    "round-trip, which the arbitrary token strings of random weights do not"
)


# ----------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in its help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the model runs (default cpu); cuda needs a visible GPU")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="tiny",
                        help="tiny: the authors' tiny CPU reference dims (default); mid: 7B widths with 2 layers "
                             "(CPU or CUDA); 7b / 13b: LLaVA-7B / -13B + SAM ViT-H, random weights, CUDA only")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="model dtype (default: fp32 on the CPU, bf16 on CUDA)")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="inference protocols to time (default: both)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16],
                        help="images per batch (default: 1 4 16); batch 1 is always run too, as the "
                             "reference of the batched-vs-single comparison")
    parser.add_argument("--images", type=int, default=16,
                        help="images timed per configuration after the warm-up (default 16); at least two "
                             "batches are always timed, so batch size B times max(IMAGES, 2B) images "
                             "(batch 16: 32). Every configuration starts from the same images")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch intra-op threads (default: the cores this process may use)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="generation budget (default: twice the longest ground-truth answer of the "
                             "timed images, in tokens)")
    parser.add_argument("--absent-fraction", type=float, default=0.3,
                        help="share of expressions without a target, answered [REJ] (default 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images, expressions and weights")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_eval"),
                        help="where the 32000-entry tokenizer and the per-run prediction dumps are written")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="CPU only: address-space limit of each measuring subprocess, so that a batch "
                             "too large for this machine fails alone instead of waking the OOM killer "
                             "(default: 90%% of MemAvailable when the bench starts; 0 = no limit)")
    parser.add_argument("--one", nargs=2, metavar=("PROTOCOL", "BATCH"), default=None,
                        help="internal: time one configuration in this process and print its JSON")
    parser.add_argument("--dump", type=Path, default=None,
                        help="internal (with --one): write the predictions there for the comparison")
    add_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with the device-dependent defaults filled in; a parser error for bad values."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.authors = AuthorsHarness.from_args(args, parser)
    if args.authors is not None and (args.shape != "tiny" or args.device != "cpu"):
        parser.error("--official-dir compares the tiny shape on the CPU")
    if args.precision is None:
        args.precision = "fp32" if args.device == "cpu" else "bf16"
    if args.shape not in CPU_SHAPES and args.device != "cuda":
        parser.error(f"--shape {args.shape} needs --device cuda (its random weights alone take tens of GB)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.images < 1 or args.threads < 1 or min(args.batch_sizes) < 1:
        parser.error("--images, --threads and every --batch-sizes value must be >= 1")
    if not 0.0 <= args.absent_fraction < 1.0:
        parser.error("--absent-fraction must be within [0, 1)")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    if args.one is not None:
        protocol, batch = args.one
        if protocol not in PROTOCOLS or not batch.isdigit() or int(batch) < 1:
            parser.error(f"--one expects PROTOCOL BATCH with PROTOCOL in {PROTOCOLS}, got {args.one}")
    return args


# ----------------------------------------------------------------- evaluation data
def evaluation_image(index: int, seed: int, absent_fraction: float) -> tuple[np.ndarray, list[SlotTarget]]:
    """Image ``index`` of the bench, (480, 640, 3) uint8: 11 or 12 targets (alternating: mean
    11.5), ``round(absent_fraction * n)`` of them absent (empty masks)."""
    count = 11 + index % 2
    absent = set(random.Random(f"{seed}/{index}/absent").sample(range(count), round(absent_fraction * count)))
    return make_image((index,), seed, [slot not in absent for slot in range(count)])


def evaluation_sample(builder: SampleBuilder, image: np.ndarray, targets: list[SlotTarget], metadata: dict) -> ImageSample:
    """The evaluator's sample of one image: one conversation naming every expression."""
    return builder.evaluation(image, [EvalQuery(targets, builder.prompts.eval_question, metadata)])


def evaluation_batches(
    builder: SampleBuilder, collate: Collator, seed: int, absent_fraction: float, batch_size: int, images: int
) -> Iterator[tuple[GsvaBatch, float]]:
    """Yield (collated batch, seconds spent building it) over images 0 .. ``images`` - 1."""
    for first in range(0, images, batch_size):
        start = time.perf_counter()
        samples: list[ImageSample] = []
        for index in range(first, min(first + batch_size, images)):
            image, targets = evaluation_image(index, seed, absent_fraction)
            samples.append(evaluation_sample(builder, image, targets, {"image_id": index}))
        yield collate(samples), time.perf_counter() - start


def answer_tokens(batch: GsvaBatch) -> list[int]:
    """Supervised (answer) tokens of each conversation of ``batch``: labels (N, L) not ignored, </s> included."""
    return (batch.labels != IGNORE_INDEX).sum(1).tolist()


def default_max_new_tokens(builder: SampleBuilder, collate: Collator, seed: int, absent_fraction: float, images: int) -> int:
    """The generation budget: twice the longest ground-truth answer of images 0 .. ``images`` - 1
    (tokens, </s> included)."""
    longest = 0
    for index in range(images):
        image, targets = evaluation_image(index, seed, absent_fraction)
        longest = max(longest, *answer_tokens(collate([evaluation_sample(builder, image, targets, {})])))
    return 2 * longest


# ----------------------------------------------------------------- model and its probes
def build_bench_model(
    shape: str, tokenizer_dir: Path, precision: str, seed: int, device: str = "cpu"
) -> tuple[PreTrainedTokenizerBase, GsvaModel, PromptSettings, Config]:
    """(tokenizer, GsvaModel in eval mode on ``device``, prompt settings, config)."""
    tokenizer, model, prompts, cfg = build_reference_model(shape, tokenizer_dir, precision, seed, device)
    return tokenizer, model.eval(), prompts, cfg


def _sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


class StageTimer:
    """Seconds spent inside groups of modules (forward pre/post hooks), summed over calls."""

    def __init__(self, stages: dict[str, list[torch.nn.Module]], device: str) -> None:
        self.device = device
        self.seconds = dict.fromkeys(stages, 0.0)
        self._started: dict[int, float] = {}
        for name, modules in stages.items():
            for module in modules:
                module.register_forward_pre_hook(self._enter)
                module.register_forward_hook(lambda module, inputs, output, name=name: self._exit(name, module))

    def _enter(self, module: torch.nn.Module, inputs: Any) -> None:
        _sync(self.device)
        self._started[id(module)] = time.perf_counter()

    def _exit(self, name: str, module: torch.nn.Module) -> None:
        _sync(self.device)
        self.seconds[name] += time.perf_counter() - self._started.pop(id(module))

    def reset(self) -> None:
        """Every stage back to zero seconds."""
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def stage_modules(model: GsvaModel) -> dict[str, list[torch.nn.Module]]:
    """The timed stages of a model call and the modules each one spans."""
    decoder = model.visual_model.mask_decoder
    return {
        "sam_image_encoder": [model.visual_model.image_encoder],
        "clip_vision_tower": [model.mllm.vision_tower],
        "llm_decoder_layers": [model.mllm.language_model.get_decoder()],
        "mask_decoder": [decoder.transformer, decoder.output_upscaling, decoder.output_hypernetworks_mlps[0]],
    }


class ForwardCounter:
    """Forward calls of a module (a forward hook) since the last ``reset``."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self.calls += 1

    def reset(self) -> None:
        """Back to zero calls."""
        self.calls = 0


# ----------------------------------------------------------------- one configuration (child process)
@dataclass(frozen=True)
class Workload:
    """What one configuration predicts: the protocol, images per batch, the generation budget and
    the seed and absent share of the images."""

    protocol: str
    batch_size: int
    max_new_tokens: int
    seed: int
    absent_fraction: float


@dataclass
class BenchModel:
    """What a measuring process builds once: the model with its probes (stage timer, decoder call
    counter), its sample pipeline and the build's cost."""

    tokenizer: PreTrainedTokenizerBase
    model: GsvaModel
    cfg: Config
    builder: SampleBuilder
    collate: Collator
    device: str
    stages: StageTimer
    decoder_calls: ForwardCounter
    build_s: float
    rss_after_build_mib: float
    peak_rss_during_build_mib: float

    def batches(self, workload: Workload, batch_size: int, images: int) -> Iterator[tuple[GsvaBatch, float]]:
        """``evaluation_batches`` of the workload's images 0 .. ``images`` - 1."""
        return evaluation_batches(self.builder, self.collate, workload.seed, workload.absent_fraction, batch_size, images)


@dataclass
class TimedBatches:
    """What the timed batches measured: one entry per batch (``*_s``, ``decoder_steps``) or per
    conversation (the rest)."""

    model_s: list[float] = field(default_factory=list)
    """Seconds of the model call (copy to the device included)."""
    data_s: list[float] = field(default_factory=list)
    """Seconds spent building and collating the batch."""
    decoder_steps: list[int] = field(default_factory=list)
    """Forward calls of the language model during the call."""
    conversation_tokens: list[int] = field(default_factory=list)
    """Tokens of the conversation (question and answer, image placeholder not expanded)."""
    answer_tokens: list[int] = field(default_factory=list)
    """Tokens of the ground-truth answer, </s> included."""
    expressions: list[int] = field(default_factory=list)
    predictions: list[SlotPredictions] = field(default_factory=list)


def limit_address_space(gigabytes: float) -> None:
    """Cap this process's address space, so that running out of memory raises instead of waking the OOM killer."""
    limit = int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def set_up(args: argparse.Namespace) -> BenchModel:
    """The shape's model (random weights, eval mode) with its probes, and the evaluator's sample
    builder and collator."""
    start = time.perf_counter()
    tokenizer, model, prompts, cfg = build_bench_model(
        args.shape, args.work_dir / "tokenizer", args.precision, args.seed, args.device
    )
    build_s = time.perf_counter() - start
    return BenchModel(
        tokenizer=tokenizer, model=model, cfg=cfg,
        builder=SampleBuilder(tokenizer, prompts, SampleSettings(sam_image_size=1024, clip_image_size=224, max_tokens=1024)),
        collate=Collator(tokenizer.pad_token_id, cfg.data.sam_image_size), device=args.device,
        stages=StageTimer(stage_modules(model), args.device), decoder_calls=ForwardCounter(model.mllm.language_model),
        build_s=build_s, rss_after_build_mib=rss_mib(), peak_rss_during_build_mib=peak_rss_mib(),
    )


def predict_synced(bench: BenchModel, batch: GsvaBatch, workload: Workload) -> list[SlotPredictions]:
    """``model.predict`` on ``batch`` moved to the device, returning once the device is done."""
    predictions = bench.model.predict(batch.to(bench.device), workload.protocol, workload.max_new_tokens, bench.tokenizer)
    _sync(bench.device)
    return predictions


def warm_up(bench: BenchModel, workload: Workload) -> int:
    """One untimed call (thread pool, lazy initialisations; on CUDA also the caching allocator and
    kernel choices): the first batch on CUDA, its first image alone on the CPU, where nothing is
    cached by shape and a warm-up of 16 images would cost as much as the timed run. The stage
    timer restarts from zero after it. Returns its images."""
    images = workload.batch_size if bench.device == "cuda" else 1
    batch, _ = next(bench.batches(workload, images, images))
    predict_synced(bench, batch, workload)
    bench.stages.reset()
    return images


def time_batches(bench: BenchModel, workload: Workload, images: int) -> TimedBatches:
    """Build and predict images 0 .. ``images`` - 1 in batches of ``workload.batch_size``, timing the two apart."""
    timed = TimedBatches()
    for batch, seconds in bench.batches(workload, workload.batch_size, images):
        timed.data_s.append(seconds)
        timed.conversation_tokens += batch.attention_mask.sum(1).tolist()
        timed.answer_tokens += answer_tokens(batch)
        timed.expressions += [int(exists.numel()) for exists in batch.slot_exists]
        bench.decoder_calls.reset()
        begin = time.perf_counter()
        timed.predictions += predict_synced(bench, batch, workload)
        timed.model_s.append(time.perf_counter() - begin)
        timed.decoder_steps.append(bench.decoder_calls.calls)
    return timed


def mean(values: list[float], digits: int) -> float:
    """The mean of ``values``, rounded to ``digits``."""
    return round(sum(values) / len(values), digits)


def stage_seconds_per_image(stage_seconds: dict[str, float], model_seconds: float, images: int) -> dict[str, float]:
    """Seconds per image in each stage, and ``other``: the rest of the model call."""
    return {
        **{name: round(seconds / images, 3) for name, seconds in stage_seconds.items()},
        "other": round((model_seconds - sum(stage_seconds.values())) / images, 3),
    }


def describe_model(bench: BenchModel, shape: str) -> dict[str, Any]:
    """The measured model: shape, parameter count, vocabulary, dims, SAM and LoRA settings."""
    cfg = bench.cfg
    return {
        "shape": shape,
        "parameters": sum(p.numel() for p in bench.model.parameters()),
        "embedding_rows": bench.model.mllm.language_model.get_input_embeddings().weight.shape[0],
        "tokenizer_entries": len(bench.tokenizer),
        "dims": dataclasses.asdict(cfg.model.tiny),
        "sam": cfg.model.sam_type,
        "finetune": cfg.model.finetune,
        "lora": {"r": cfg.model.lora_r, "alpha": cfg.model.lora_alpha, "targets": cfg.model.lora_target_modules},
    }


def throughput_fields(timed: TimedBatches, stage_seconds: dict[str, float], images: int) -> dict[str, Any]:
    """Images/s and seconds per image of the model call, per stage and with the data path added."""
    total_model, total_data = sum(timed.model_s), sum(timed.data_s)
    return {
        "images_timed": images,
        "batches_timed": len(timed.model_s),
        "images_per_s": round(images / total_model, 3),
        "s_per_image": round(total_model / images, 3),
        "batch_s": [round(value, 2) for value in timed.model_s],
        "stage_s_per_image": stage_seconds_per_image(stage_seconds, total_model, images),
        "data_s_per_image": round(total_data / images, 3),
        "images_per_s_with_data": round(images / (total_model + total_data), 3),
    }


def workload_fields(timed: TimedBatches, cfg: Config) -> dict[str, Any]:
    """What the timed conversations held: expressions, tokens (answer included), answer tokens, image tokens."""
    return {
        "mean_expressions_per_image": mean(timed.expressions, 2),
        "mean_tokens_per_conversation": mean(timed.conversation_tokens, 1),
        "mean_answer_tokens": mean(timed.answer_tokens, 1),
        "image_tokens": (cfg.data.clip_image_size // cfg.model.tiny.clip_patch_size) ** 2,
    }


def generated_text_tokens(predictions: list[SlotPredictions], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Per conversation: tokens of its decoded answer text re-encoded, without special tokens added
    (the generated </s> is not in the text, so not counted)."""
    return [len(tokenizer(p.text, add_special_tokens=False).input_ids) for p in predictions]


def generation_fields(timed: TimedBatches, max_new_tokens: int, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What generation produced (see ``GENERATION_NOTE``): decoder steps, answer text length, slots, parse failures."""
    predictions = timed.predictions
    return {
        "max_new_tokens": max_new_tokens,
        "decoder_steps_per_batch": mean(timed.decoder_steps, 1),
        "mean_generated_text_tokens_per_conversation": mean(generated_text_tokens(predictions, tokenizer), 1),
        "generated_seg_per_conversation": mean([p.text.count(SEG_TOKEN) for p in predictions], 2),
        "generated_rej_per_conversation": mean([p.text.count(REJ_TOKEN) for p in predictions], 2),
        "mean_parse_failures": mean([p.parse_failures for p in predictions], 2),
    }


def write_dump(predictions: list[SlotPredictions], path: Path) -> None:
    """Save decisions, texts and bit-packed masks (each (T, H, W) bool) for the batch-vs-single comparison."""
    torch.save({
        "rejected": [list(p.rejected) for p in predictions],
        "shapes": [list(p.masks.shape) for p in predictions],
        "masks": [torch.from_numpy(np.packbits(p.masks.numpy().reshape(-1))) for p in predictions],
        "texts": [p.text for p in predictions],
    }, path)


def load_dump(path: Path) -> dict[str, Any]:
    """What ``write_dump`` saved, masks unpacked to (T, H, W) bool arrays."""
    dump = torch.load(path, weights_only=True)
    dump["masks"] = [
        np.unpackbits(packed.numpy(), count=int(np.prod(shape))).reshape(shape).astype(bool)
        for packed, shape in zip(dump["masks"], dump["shapes"])
    ]
    return dump


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Time configuration ``--one PROTOCOL BATCH`` in this process: its JSON row (the model's
    description under ``model``); the predictions are written to ``--dump`` when given."""
    if args.device == "cpu" and args.memory_limit_gb:
        limit_address_space(args.memory_limit_gb)
    torch.set_num_threads(args.threads)
    bench = set_up(args)
    max_new_tokens = args.max_new_tokens or default_max_new_tokens(
        bench.builder, bench.collate, args.seed, args.absent_fraction, args.images
    )
    workload = Workload(args.one[0], int(args.one[1]), max_new_tokens, args.seed, args.absent_fraction)
    warmup_images = warm_up(bench, workload)
    load_before = os.getloadavg()[0]
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    images = max(args.images, 2 * workload.batch_size)
    timed = time_batches(bench, workload, images)
    result: dict[str, Any] = {
        "model": describe_model(bench, args.shape),
        "protocol": workload.protocol,
        "batch_size": workload.batch_size,
        **throughput_fields(timed, bench.stages.seconds, images),
        "warmup_images": warmup_images,
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mib": round(peak_rss_mib()),
        "rss_after_build_mib": round(bench.rss_after_build_mib),
        "peak_rss_during_build_mib": round(bench.peak_rss_during_build_mib),
        "build_s": round(bench.build_s, 1),
        **workload_fields(timed, bench.cfg),
    }
    if args.device == "cuda":
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        result["cuda_device"] = torch.cuda.get_device_name()
    if workload.protocol == "generate":
        result.update(generation_fields(timed, max_new_tokens, bench.tokenizer))
    if args.dump is not None:
        write_dump(timed.predictions, args.dump)
    return result


# ----------------------------------------------------------------- comparison and driver (parent)
def compare_to_single(single: dict[str, Any], batched: dict[str, Any]) -> dict[str, Any]:
    """Agreement of batched predictions with batch-1 predictions of the same images (two ``load_dump`` results)."""
    decisions = same_masks = 0
    slots, ious = 0, []
    pairs = list(zip(single["rejected"], batched["rejected"], single["masks"], batched["masks"]))
    for rej_1, rej_b, masks_1, masks_b in pairs:
        slots += max(len(rej_1), len(rej_b))
        decisions += sum(a == b for a, b in zip(rej_1, rej_b))
        for first, second in zip(masks_1, masks_b):
            union = np.logical_or(first, second).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(first, second).sum() / union))
            same_masks += bool(np.array_equal(first, second))
    texts = [a == b for a, b in zip(single["texts"], batched["texts"])]
    return {
        "images_compared": len(pairs),
        "slots": slots,
        "decisions_identical": decisions == slots,
        "decision_agreement": round(decisions / max(slots, 1), 4),
        "masks_identical": same_masks == len(ious),
        "mask_identical_fraction": round(same_masks / max(len(ious), 1), 4),
        "mask_iou_min": round(min(ious), 5) if ious else None,
        "mask_iou_mean": round(float(np.mean(ious)), 5) if ious else None,
        "generated_text_identical_fraction": round(sum(texts) / len(texts), 4) if texts and any(single["texts"]) else None,
    }


def _available_memory_gb() -> float:
    """MemAvailable of this host in GiB (0 when /proc/meminfo does not say)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _child_command(args: argparse.Namespace, protocol: str, batch_size: int, dump: Path) -> list[str]:
    """The command that times one configuration (``--one``) with this run's settings."""
    command = [
        sys.executable, "-m", "gsva.bench.evaluation", "--one", protocol, str(batch_size), "--dump", str(dump),
        "--device", args.device, "--shape", args.shape, "--precision", args.precision, "--images", str(args.images),
        "--threads", str(args.threads), "--absent-fraction", str(args.absent_fraction), "--seed", str(args.seed),
        "--work-dir", str(args.work_dir),
    ]
    if args.max_new_tokens is not None:
        command += ["--max-new-tokens", str(args.max_new_tokens)]
    if args.memory_limit_gb is not None:
        command += ["--memory-limit-gb", str(args.memory_limit_gb)]
    return command


def failure_reason(returncode: int, stderr: str, memory_limit_gb: float | None) -> str:
    """Why a measuring subprocess failed, from its exit status and its stderr."""
    if "MemoryError" in stderr or "can't allocate memory" in stderr:
        return f"out of memory under --memory-limit-gb {memory_limit_gb}"
    return "killed (out of memory?)" if returncode < 0 else f"exit status {returncode}"


def run_configuration(args: argparse.Namespace, protocol: str, batch_size: int, dump: Path) -> dict[str, Any]:
    """Time one configuration in a fresh subprocess: its JSON row, or ``error`` and ``stderr_tail``."""
    log(f"[bench_eval] {protocol}, batch {batch_size}: {max(args.images, 2 * batch_size)} images ...")
    child = subprocess.run(_child_command(args, protocol, batch_size, dump), capture_output=True, text=True)
    if child.returncode != 0:
        reason = failure_reason(child.returncode, child.stderr, args.memory_limit_gb)
        log(f"[bench_eval]   failed: {reason}\n{child.stderr[-2000:]}")
        return {"error": reason, "stderr_tail": child.stderr[-2000:]}
    row = json.loads(child.stdout.strip().splitlines()[-1])
    log(f"[bench_eval]   {row['images_per_s']} images/s")
    return row


def batch_agreement(dumps: Path, protocol: str, batch_sizes: list[int]) -> dict[str, Any] | None:
    """``compare_to_single`` for each batch size of ``protocol`` that left a dump; None without the batch-1 dump."""
    if not (dumps / f"{protocol}_1.pt").is_file():
        return None
    single = load_dump(dumps / f"{protocol}_1.pt")
    return {
        str(size): compare_to_single(single, load_dump(dumps / f"{protocol}_{size}.pt"))
        for size in batch_sizes
        if size != 1 and (dumps / f"{protocol}_{size}.pt").is_file()
    }


def start_run(args: argparse.Namespace) -> list[float]:
    """Prepare the work dir, the tokenizer and the default memory limit; the load averages now."""
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.memory_limit_gb is None and args.device == "cpu":
        args.memory_limit_gb = round(0.9 * _available_memory_gb(), 1)
    if load_at_start[0] > 0.5:
        log(f"[bench_eval] warning: load average {load_at_start[0]} before the start: other processes use "
             "the CPU and the timings will be slower and noisier than on an idle machine")
    prepare_tokenizer(args.work_dir, args.seed)
    return load_at_start


def data_description(absent_fraction: float) -> dict[str, Any]:
    """The evaluation samples, as the report describes them."""
    return {
        "image_size_hw": [IMAGE_HEIGHT, IMAGE_WIDTH],
        "expressions_per_image": "11 or 12 (mean 11.5)",
        "absent_fraction": absent_fraction,
        "one_conversation_per_image": True,
        "question": EVAL_QUESTIONS["please"] + " (PromptSettings.eval_question)",
    }


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Every (protocol, batch size) in its own subprocess, the batch-vs-single comparison, then the
    authors' evaluation when asked: the report, and whether a configuration failed."""
    wall_start = time.perf_counter()
    load_at_start = start_run(args)
    batch_sizes = sorted(set(args.batch_sizes) | {1})
    results: dict[str, dict[str, Any]] = {}
    agreement: dict[str, dict[str, Any]] = {}
    model_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as dumps:
        for protocol in args.protocols:
            rows = {str(size): run_configuration(args, protocol, size, Path(dumps) / f"{protocol}_{size}.pt")
                    for size in batch_sizes}
            for row in rows.values():
                model_info = row.pop("model", model_info)
            results[protocol] = rows
            compared = batch_agreement(Path(dumps), protocol, batch_sizes)
            if compared is not None:
                agreement[protocol] = compared
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "precision": args.precision,
        "threads": args.threads,
        "memory_limit_gb_per_subprocess": args.memory_limit_gb,
        "torch": torch.__version__,
        "load_average_at_start": load_at_start,
        "model": model_info,
        "data": data_description(args.absent_fraction),
        "timing_note": TIMING_NOTE,
        "generation_note": GENERATION_NOTE,
        "results": results,
        "batch_vs_single": agreement,
        "total_wall_s": round(time.perf_counter() - wall_start, 1),
    }
    if args.authors is not None:
        report["authors"] = authors_comparison(args, results.get("teacher-forced", {}))
    failed = any("error" in row for rows in results.values() for row in rows.values())
    return report, failed


def authors_comparison(args: argparse.Namespace, teacher_forced: dict[str, Any]) -> dict[str, Any]:
    """The authors' ``eval_gres`` path on their fixture's val split (batch 1, teacher-forced with
    re-evaluation), right after ours; the ratio of our images/s at each batch size to theirs."""
    measured = args.authors.run("bench_model.py", [
        "--fixture", str(args.authors.fixture(args.work_dir)), "--mode", "eval", "--eval-passes", "1",
        "--threads", str(args.threads), "--work-dir", str(args.work_dir / "authors_model"),
    ])
    authors_s = measured["eval_model_ms_per_image"] / 1000
    return {
        "s_per_image": round(authors_s, 3),
        "ms_per_expression": measured["eval_model_ms_per_expression"],
        "peak_rss_mb": measured.get("peak_rss_mb"),
        "command": measured["command"],
        "ratio_teacher_forced": {
            f"batch {size}": ratio(1 / entry["images_per_s"], authors_s) for size, entry in teacher_forced.items() if "images_per_s" in entry
        },
    }


def main(argv: list[str] | None = None) -> int:
    """The command line: the JSON report on stdout (exit status 1 when a configuration failed)."""
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
