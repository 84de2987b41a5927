"""Measure evaluation throughput (images/s) and peak memory of the GSVA model.

Both inference protocols are timed at batch sizes 1, 4 and 16 (images per batch; one
conversation per image naming all of its expressions, as the evaluator builds it):

- ``teacher-forced``: ``GsvaModel.predict_teacher_forced`` (the paper's gRefCOCO protocol);
- ``generate``: ``GsvaModel.generate`` (free greedy decoding with KV cache).

The model is assembled by ``build_gsva`` from a config, with random weights, at the dimensions of
the authors' tiny CPU reference (``--shape tiny``, fp32: LLaMA 256x4, 4 heads, vocabulary 32000 +
[SEG] [REJ] <im_start> <im_end>; CLIP 128x2 at 224 px, patch 14; SAM ViT 128x2 at 1024 px with
the standard prompt encoder and mask decoder; LoRA r=8 on q/v). ``--shape 7b`` / ``13b`` (bf16, CUDA only)
build LLaMA-7B / -13B + CLIP ViT-L/14 + SAM ViT-H instead, and ``--shape mid`` the 7B widths with 2
layers and the tiny SAM encoder (runs on a CPU).

Evaluation samples are COCO-sized (640x480) images with 11 or 12 expressions each (mean 11.5,
about 30 % absent: answered [REJ]), built by ``SampleBuilder.evaluation`` (one conversation per
image, the fixed evaluation question naming every expression, as ``ReferSegDataset`` does for
gRefCOCO) and collated by ``Collator``, as in ``gsva.engine.evaluator``. The tokenizer is a BPE of
exactly 32000 entries trained locally (LLaMA's size; no download).

Each (protocol, batch size) runs in a fresh subprocess so that its peak RSS (and, on CUDA, its
peak allocated memory) is its own: a warm-up call (the first image on the CPU, the first batch on
CUDA), then at least two batches timed. The model call is timed apart from building and
collating the samples. Batched predictions are compared with batch-1 predictions of the same
images. One JSON object is printed on stdout (progress goes to stderr). Timings on a machine
that other processes keep busy are slower and noisier: the load average is reported beside them.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsva.data.sample_builder import EvalQuery, SampleBuilder, SampleSettings, SlotTarget
from gsva.data.samples import Collator, ImageSample
from gsva.text.prompts import EVAL_QUESTIONS
from gsva.bench.authors import AuthorsHarness, add_arguments, ratio
from gsva.bench.shapes import CPU_SHAPES, SHAPES, build_reference_model
from gsva.bench.workload import IMAGE_HEIGHT, IMAGE_WIDTH, log, make_image, peak_rss_mib, prepare_tokenizer, rss_mib
from gsva.model.gsva import PROTOCOLS, SlotPredictions
from gsva.text.special_tokens import IGNORE_INDEX, REJ_TOKEN, SEG_TOKEN



# ----------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    """Image ``index`` of the bench: 11 or 12 targets (alternating: mean 11.5),
    ``round(absent_fraction * n)`` of them absent (empty masks)."""
    count = 11 + index % 2
    absent = set(random.Random(f"{seed}/{index}/absent").sample(range(count), round(absent_fraction * count)))
    return make_image((index,), seed, [slot not in absent for slot in range(count)])


# ----------------------------------------------------------------- model
def build_bench_model(shape: str, tokenizer_dir: Path, precision: str, seed: int, device: str = "cpu"):
    """(tokenizer, GsvaModel in eval mode on ``device``, prompt settings, config)."""
    tokenizer, model, prompts, cfg = build_reference_model(shape, tokenizer_dir, precision, seed, device)
    return tokenizer, model.eval(), prompts, cfg


# ----------------------------------------------------------------- one configuration (child process)
def _sync(device: str) -> None:
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
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def _batches(builder: SampleBuilder, collate: Collator, args: argparse.Namespace, batch_size: int, images: int):
    """Yield (collated batch, seconds spent building it) over images 0 .. ``images`` - 1."""
    for first in range(0, images, batch_size):
        start = time.perf_counter()
        samples: list[ImageSample] = []
        for index in range(first, min(first + batch_size, images)):
            image, targets = evaluation_image(index, args.seed, args.absent_fraction)
            samples.append(evaluation_sample(builder, image, targets, {"image_id": index}))
        batch = collate(samples)
        yield batch, time.perf_counter() - start


def evaluation_sample(builder: SampleBuilder, image: np.ndarray, targets: list[SlotTarget], metadata: dict) -> ImageSample:
    """The evaluator's sample of one image: one conversation naming every expression."""
    return builder.evaluation(image, [EvalQuery(targets, builder.prompts.eval_question, metadata)])


def _answer_tokens(batch) -> list[int]:
    return (batch.labels != IGNORE_INDEX).sum(1).tolist()


def _available_memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    protocol, batch_size = args.one[0], int(args.one[1])
    if args.device == "cpu" and args.memory_limit_gb:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(args.threads)
    device = args.device
    start = time.perf_counter()
    tokenizer, model, prompts, cfg = build_bench_model(args.shape, args.work_dir / "tokenizer", args.precision, args.seed, device)
    build_s = time.perf_counter() - start
    builder = SampleBuilder(tokenizer, prompts, SampleSettings(sam_image_size=1024, clip_image_size=224, max_tokens=1024))
    collate = Collator(tokenizer.pad_token_id, cfg.data.sam_image_size)
    rss_after_build, peak_after_build = rss_mib(), peak_rss_mib()

    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:  # twice the longest answer of the timed images (tokens, </s> included)
        longest = 0
        for index in range(args.images):
            image, targets = evaluation_image(index, args.seed, args.absent_fraction)
            longest = max(longest, *_answer_tokens(collate([evaluation_sample(builder, image, targets, {})])))
        max_new_tokens = 2 * longest
    language_model = model.mllm.language_model
    generated_lengths: list[int] = []  # new tokens per conversation, up to and including </s>
    generate = language_model.generate

    def recording_generate(*gen_args, **gen_kwargs):
        output = generate(*gen_args, **gen_kwargs)
        finished = (output.sequences == tokenizer.eos_token_id).long().cumsum(1)
        generated_lengths.extend(((finished == 0).sum(1) + (finished[:, -1] > 0).long()).tolist())
        return output

    language_model.generate = recording_generate
    decoder_calls: list[int] = []
    language_model.register_forward_hook(lambda module, inputs, output: decoder_calls.append(1))
    decoder = model.visual_model.mask_decoder
    stages = StageTimer({
        "sam_image_encoder": [model.visual_model.image_encoder],
        "clip_vision_tower": [model.mllm.vision_tower],
        "llm_decoder_layers": [language_model.get_decoder()],
        "mask_decoder": [decoder.transformer, decoder.output_upscaling, decoder.output_hypernetworks_mlps[0]],
    }, device)

    def predict(batch) -> list[SlotPredictions]:
        return model.predict(batch, protocol, max_new_tokens, tokenizer)

    # Warm-up (thread pool, lazy initialisations; on CUDA also the caching allocator and kernel
    # choices): the first batch on CUDA, its first image alone on the CPU, where nothing is cached
    # by shape and a warm-up of 16 images would cost as much as the timed run.
    warmup_images = batch_size if device == "cuda" else 1
    warm_batch, _ = next(_batches(builder, collate, args, warmup_images, warmup_images))
    predict(warm_batch.to(device))
    _sync(device)
    generated_lengths.clear()
    stages.reset()
    load_before = os.getloadavg()[0]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    model_s, data_s, steps, prompt_tokens, answer_tokens, expressions = [], [], [], [], [], []
    predictions: list[SlotPredictions] = []
    images = max(args.images, 2 * batch_size)
    for batch, seconds in _batches(builder, collate, args, batch_size, images):
        data_s.append(seconds)
        prompt_tokens += batch.attention_mask.sum(1).tolist()
        answer_tokens += _answer_tokens(batch)
        expressions += [int(exists.numel()) for exists in batch.slot_exists]
        decoder_calls.clear()
        begin = time.perf_counter()
        predictions += predict(batch.to(device))
        _sync(device)
        model_s.append(time.perf_counter() - begin)
        steps.append(len(decoder_calls))

    total_model, total_data = sum(model_s), sum(data_s)
    result: dict[str, Any] = {
        "model": {
            "shape": args.shape,
            "parameters": sum(p.numel() for p in model.parameters()),
            "embedding_rows": language_model.get_input_embeddings().weight.shape[0],
            "tokenizer_entries": len(tokenizer),
            "dims": dataclasses.asdict(cfg.model.tiny),
            "sam": cfg.model.sam_type,
            "finetune": cfg.model.finetune,
            "lora": {"r": cfg.model.lora_r, "alpha": cfg.model.lora_alpha, "targets": cfg.model.lora_target_modules},
        },
        "protocol": protocol,
        "batch_size": batch_size,
        "images_timed": images,
        "batches_timed": len(model_s),
        "images_per_s": round(images / total_model, 3),
        "s_per_image": round(total_model / images, 3),
        "batch_s": [round(value, 2) for value in model_s],
        "stage_s_per_image": {
            **{name: round(seconds / images, 3) for name, seconds in stages.seconds.items()},
            "other": round((total_model - sum(stages.seconds.values())) / images, 3),
        },
        "data_s_per_image": round(total_data / images, 3),
        "images_per_s_with_data": round(images / (total_model + total_data), 3),
        "warmup_images": warmup_images,
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mib": round(peak_rss_mib()),
        "rss_after_build_mib": round(rss_after_build),
        "peak_rss_during_build_mib": round(peak_after_build),
        "build_s": round(build_s, 1),
        "mean_expressions_per_image": round(sum(expressions) / len(expressions), 2),
        "mean_tokens_per_conversation": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "mean_answer_tokens": round(sum(answer_tokens) / len(answer_tokens), 1),
        "image_tokens": (cfg.data.clip_image_size // cfg.model.tiny.clip_patch_size) ** 2,
    }
    if device == "cuda":
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        result["cuda_device"] = torch.cuda.get_device_name()
    if protocol == "generate":
        lengths = generated_lengths
        result.update({
            "max_new_tokens": max_new_tokens,
            "decoder_steps_per_batch": round(sum(steps) / len(steps), 1),
            "mean_generated_tokens_per_conversation": round(sum(lengths) / len(lengths), 1),
            "generated_seg_per_conversation": round(sum(p.text.count(SEG_TOKEN) for p in predictions) / len(predictions), 2),
            "generated_rej_per_conversation": round(sum(p.text.count(REJ_TOKEN) for p in predictions) / len(predictions), 2),
            "mean_parse_failures": round(sum(p.parse_failures for p in predictions) / len(predictions), 2),
        })
    if args.dump is not None:
        torch.save({
            "rejected": [list(p.rejected) for p in predictions],
            "shapes": [list(p.masks.shape) for p in predictions],
            "masks": [torch.from_numpy(np.packbits(p.masks.numpy().reshape(-1))) for p in predictions],
            "texts": [p.text for p in predictions],
        }, args.dump)
    return result


# ----------------------------------------------------------------- comparison and driver (parent)
def _load_dump(path: Path) -> dict[str, Any]:
    dump = torch.load(path, weights_only=True)
    masks = []
    for packed, shape in zip(dump["masks"], dump["shapes"]):
        count = int(np.prod(shape))
        masks.append(np.unpackbits(packed.numpy(), count=count).reshape(shape).astype(bool))
    dump["masks"] = masks
    return dump


def compare_to_single(single: dict[str, Any], batched: dict[str, Any]) -> dict[str, Any]:
    """Agreement of batched predictions with batch-1 predictions of the same images."""
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


def _child_command(args: argparse.Namespace, protocol: str, batch_size: int, dump: Path) -> list[str]:
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


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    wall_start = time.perf_counter()
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.memory_limit_gb is None and args.device == "cpu":
        args.memory_limit_gb = round(0.9 * _available_memory_gb(), 1)
    if load_at_start[0] > 0.5:
        log(f"[bench_eval] warning: load average {load_at_start[0]} before the start: other processes use "
             "the CPU and the timings will be slower and noisier than on an idle machine")
    prepare_tokenizer(args.work_dir, args.seed)
    model_info: dict[str, Any] = {}
    batch_sizes = sorted(set(args.batch_sizes) | {1})
    results: dict[str, dict[str, Any]] = {}
    agreement: dict[str, dict[str, Any]] = {}
    failed = False
    with tempfile.TemporaryDirectory(dir=args.work_dir) as dumps:
        for protocol in args.protocols:
            results[protocol] = {}
            for batch_size in batch_sizes:
                dump = Path(dumps) / f"{protocol}_{batch_size}.pt"
                log(f"[bench_eval] {protocol}, batch {batch_size}: {max(args.images, 2 * batch_size)} images ...")
                child = subprocess.run(_child_command(args, protocol, batch_size, dump), capture_output=True, text=True)
                if child.returncode != 0:
                    failed = True
                    reason = "killed (out of memory?)" if child.returncode < 0 else f"exit status {child.returncode}"
                    if "MemoryError" in child.stderr or "can't allocate memory" in child.stderr:
                        reason = f"out of memory under --memory-limit-gb {args.memory_limit_gb}"
                    results[protocol][str(batch_size)] = {"error": reason, "stderr_tail": child.stderr[-2000:]}
                    log(f"[bench_eval]   failed: {reason}\n{child.stderr[-2000:]}")
                    continue
                results[protocol][str(batch_size)] = json.loads(child.stdout.strip().splitlines()[-1])
                model_info = results[protocol][str(batch_size)].pop("model")
                log(f"[bench_eval]   {results[protocol][str(batch_size)]['images_per_s']} images/s")
            if (Path(dumps) / f"{protocol}_1.pt").is_file():
                single = _load_dump(Path(dumps) / f"{protocol}_1.pt")
                agreement[protocol] = {
                    str(size): compare_to_single(single, _load_dump(Path(dumps) / f"{protocol}_{size}.pt"))
                    for size in batch_sizes
                    if size != 1 and (Path(dumps) / f"{protocol}_{size}.pt").is_file()
                }

    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "precision": args.precision,
        "threads": args.threads,
        "memory_limit_gb_per_subprocess": args.memory_limit_gb,
        "torch": torch.__version__,
        "load_average_at_start": load_at_start,
        "model": model_info,
        "data": {
            "image_size_hw": [IMAGE_HEIGHT, IMAGE_WIDTH],
            "expressions_per_image": "11 or 12 (mean 11.5)",
            "absent_fraction": args.absent_fraction,
            "one_conversation_per_image": True,
            "question": EVAL_QUESTIONS["please"] + " (PromptSettings.eval_question)",
        },
        "timing_note": "images_per_s counts the model call only (batch already collated); "
                       "images_per_s_with_data adds building + collating the samples in the same process; "
                       "stage_s_per_image splits the model call ('other': lm_head, splicing, mask "
                       "post-processing, generation bookkeeping). With random weights generation emits "
                       "no [SEG] (see generated_seg_per_conversation), so the generate timings carry no "
                       "mask decoding: add the teacher-forced mask_decoder time for a trained model",
        "results": results,
        "batch_vs_single": agreement,
        "total_wall_s": round(time.perf_counter() - wall_start, 1),
    }
    if args.authors is not None:
        report["authors"] = authors_comparison(args, results.get("teacher-forced", {}))
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
