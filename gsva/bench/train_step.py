"""Measure the GSVA training step: seconds per step split in phases, throughput, model FLOPs
utilisation and peak memory, with and without the frozen-encoder feature cache.

Shapes (random weights assembled by ``build_gsva``; LoRA r=8, alpha 16, dropout 0.05 on q/v; the
trainable-parameter policy of ``apply_trainable_policy``; a BPE tokenizer of exactly 32000 entries
trained locally, LLaMA's size, plus [SEG] [REJ] <im_start> <im_end>):

- ``tiny`` (CPU, fp32): the authors' tiny CPU reference dims (the official benchmark harness's ``tiny_dims.json``):
  LLaMA 256x4, CLIP 128x2 at 224 px, SAM ViT 128x2 at 1024 px with the standard prompt encoder and
  mask decoder;
- ``7b`` / ``13b`` (CUDA, bf16): LLaMA-7B / -13B decoder dims, CLIP ViT-L/14 at 224 px, SAM ViT-H;
- ``mid`` (CPU fp32 or CUDA): the 7B path at a width a CPU runs, LLaMA-7B and CLIP ViT-L/14 widths
  with 2 layers each and the tiny SAM encoder.

Gradient checkpointing of the LLM decoder layers is on (``--gradient-checkpointing off`` to
compare). The step timed is the one ``train.py`` runs, on the same code path: the DeepSpeed engine
of ``gsva.engine.trainer.build_engine`` (after ``init_distributed``: one rank, NCCL on CUDA, gloo
on the CPU), its forward ``engine(batch)``, and ``backward_and_step`` (``engine.backward`` then
``engine.step``), as ``train_loop`` calls them. The engine's config is ``deepspeed_config`` of the
shape's config: ZeRO stage ``--zero-stage`` (default 2, the recipe's ``optim.zero_stage``), AdamW
(lr 3e-4, betas (0.9, 0.95), weight decay 0) over ``parameter_groups``, gradient clipping at
``--grad-clip`` (the recipe's ``optim.grad_clip``, default 1.0; 0 = none), the model's precision
(``model.precision``) as the engine's bf16 / fp16 setting, a micro-batch of ``--images-per-step``
images and no gradient accumulation (``optim.grad_accum_steps`` 1), so that every step updates the
weights; the LR multiplier is constant (the schedule changes no work). The engine is timed rather
than a plain ``torch.optim`` optimizer because that is what training pays for: ZeRO's gradient
buckets and partitions in the backward, the fp32 master weights, the gradient norm and clipping,
the update and the copy back into the model's weights. A step is a micro-batch of 2 COCO-sized
(640x480) images with ``--targets`` expressions each (at 5: 7 present targets answered [SEG] and 3 absent ones
answered [REJ], as the reference step; otherwise 30 % absent), phrased at random by
``SampleBuilder.segmentation``, built by ``--num-workers`` DataLoader workers (0: in the timing
process) and collated by ``Collator``. Each configuration restarts from the same weights (a fresh
engine) and the same images, so the losses of the runs with and without the cache are compared
step by step.

Phases of a step (CUDA events recorded in module hooks, read after the step; host clock on CPU):

- ``data_wait``: waiting for the next collated batch (host clock; building it when there are no
  workers), plus the copy to the device;
- ``sam_encode``: pixel normalisation and SAM's image encoder (absent with the cache);
- ``llm_forward``: CLIP tower (absent with the cache), mm projector, splice, LLM decoder, logits
  and cross-entropy at the answer positions;
- ``mask_forward``: query projector, batched mask decoding, upsampling, BCE + DICE;
- ``mask_backward``: backward down to the query projector's input;
- ``llm_backward``: the rest of ``engine.backward`` (LLM, with the recomputation of checkpointing,
  and the engine's gradient handling: ZeRO's bucketed reduction into the gradient partition);
- ``engine_step``: ``engine.step()`` at the accumulation boundary (every step here): gradient norm
  and clipping, AdamW on the master weights, the copy back into the model's weights, zeroing of the
  gradients and the LR scheduler's step.

Model FLOPs per step (``gsva.bench.flops``, multiply-add = 2 FLOPs; N conversations of T_n tokens
after the P patch features are spliced in, A supervised answer tokens, Q [SEG] queries, B images):
LLM = 2·F_lin + 3·F_lora + 3·F_attn + 3·F_head with F_lin = Σ 2·T_n·W_lin (frozen decoder linear
weights), F_lora = Σ 2·T_n·W_lora, F_attn = Σ 2·L·T_n²·d (causal), F_head = 2·A·d·V (frozen weights
need activation gradients only, trained ones weight gradients too, attention backward = 2x);
CLIP = B·[2·(P+1)·W_clip + 4·L_c·(P+1)²·d_c + 2·P·3·p²·d_c + 2·P·W_proj] (forward only); SAM
encoder = B·[Σ_blocks (2·T_a·W_attn + 4·w_t·T_a·d_s + 2·T_a·(h+w)·d_s + 2·n·W_mlp) + 2·n·(3·16²·d_s +
W_neck)] (forward only; T_a attended tokens, w_t tokens per window); mask decoder = 3·Q·F_dec with
F_dec one query's forward counted by ``torch.utils.flop_counter``. Checkpointing's recomputation
is not counted. MFU = model FLOPs / step seconds / the device's dense bf16 peak (H100/H200 SXM
989.4 TFLOP/s, A100 312); the measured rate of an 8192³ bf16 matmul is reported beside it. With
the cache the SAM and CLIP terms are not computed and not counted.

Memory: peak RSS of a fresh process per configuration on the CPU; on CUDA
``torch.cuda.max_memory_allocated`` per configuration (one process per shape, weights included).
What the engine's optimizer holds is read from it (``optimizer_memory``): the AdamW states in the
``state`` of the torch optimizer inside DeepSpeed's wrappers (``engine.optimizer.optimizer`` for
ZeRO 1/2 and for bf16/fp16 at stage 0, ``engine.optimizer`` itself for fp32 at stage 0) and the
master weights it updates when they are not the model's own (ZeRO's flat fp32 partitions, fp32
copies of bf16 weights). At ZeRO stage 2 the per-GPU figure for 8 GPUs is an estimate: the
measured peak minus 7/8 of those two (each rank keeps 1/8 of them); the gradient partition is
left at its one-rank size, so the estimate errs high.

Host synchronisations: one extra step per shape under ``HostSyncCounter`` (calls that read a device
value back, by package; the forward + ``engine.backward`` and the ``engine.step`` counted apart)
and, on CUDA, under ``torch.cuda.set_sync_debug_mode`` (synchronising CUDA calls actually made,
forward, backward and engine step).

The authors' step (``--official-dir`` with ``--official-harness``): their harness
(``bench_model_gpu.py``) times their training step right after ours, in the same invocation, on the
same shape, device, precision, threads, micro-batch, targets per image (30 % of them absent, 3 of
10 at 5 targets), gradient checkpointing, AdamW and gradient clipping (our ``--grad-clip`` passed to
their ``--grad-clip``), each configuration from the same weights; the report gives the
median seconds per step and the peak memory of both sides, and the ratio with and without the
cache. With ``--device-check`` their code is timed at 7B for ``AUTHORS_DEVICE_CHECK`` targets.

    python scripts/bench_train.py                               # tiny, CPU, 5 targets, cache off and on
    python scripts/bench_train.py --official-dir D --official-harness H   # and the authors' step beside it
    python scripts/bench_train.py --shape mid --targets 5 10 --official-dir D --official-harness H  # 7B path on a CPU
    python scripts/bench_train.py --targets 1 5 10 --feature-cache off
    python scripts/bench_train.py --shape 7b --device cuda --targets 1 3 5 8 10
    python scripts/bench_train.py --grad-clip 0 --zero-stage 0              # no clipping, no ZeRO partitioning
    python scripts/bench_train.py --device-check --json-out bench.json   # 7b sweep + 13b on one GPU
    python scripts/bench_train.py --device-check --official-dir D --official-harness H  # + the authors' 7B step
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from gsva.atomic import write_json_atomic
from gsva.batch import GsvaBatch
from gsva.data.sample_builder import SampleBuilder, SampleSettings
from gsva.data.samples import Collator
from gsva.bench.authors import AuthorsHarness, add_arguments, ratio
from gsva.bench.host_syncs import HostSyncCounter, python_site
from gsva.feature_cache import FeatureCache, FeatureCacheWriter, FeatureLayout, image_key
from gsva.model.encoder_features import encode_features, encoder_layout
from gsva.bench.flops import mask_decoder_flops_per_query, step_flops
from gsva.bench.shapes import CPU_SHAPES, SHAPES, build_reference_model
from gsva.config import Config, OptimConfig
from gsva.engine.distributed import init_distributed
from gsva.engine.trainer import backward_and_step, build_engine, deepspeed_config
from gsva.bench.workload import IMAGE_HEIGHT, IMAGE_WIDTH, log, make_image, peak_rss_mib, prepare_tokenizer
from gsva.model.gsva import GsvaModel

BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
"""Dense bf16 peak of the SXM parts (datasheets), matched against the CUDA device name."""
ABSENT_PER_STEP = {1: 0, 5: 3}
"""Absent targets per 2 images (answered [REJ]); other counts: 30 % of the targets, rounded."""
DEVICE_CHECK = {"7b": [1, 3, 5, 8, 10], "13b": [1, 5, 10]}
"""The sweep of ``--device-check``: targets per image for each shape, cache off and on."""
AUTHORS_DEVICE_CHECK = {"7b": [5, 10]}
"""The authors' configurations timed by ``--device-check`` with ``--official-dir`` (micro-batch 2, no cache)."""
PHASES = ("data_wait", "sam_encode", "llm_forward", "mask_forward", "mask_backward", "llm_backward", "engine_step")
CACHE_MODES = {"off": (False,), "on": (True,), "both": (False, True)}


# ----------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in its help)."""
    recipe = OptimConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="tiny",
                        help="tiny: the authors' tiny CPU reference (default); mid: 7B widths with 2 layers (CPU or "
                             "CUDA); 7b / 13b: LLaVA-7B / -13B + SAM ViT-H (CUDA)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the step runs (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="model.precision: the model's dtype and the engine's bf16 / fp16 setting, as in train.py "
                             "(default: fp32 on the CPU, bf16 on CUDA; fp16 needs CUDA)")
    parser.add_argument("--grad-clip", type=float, default=recipe.grad_clip,
                        help=f"optim.grad_clip: the engine's gradient-norm clipping (default {recipe.grad_clip}, the "
                             "recipe's; 0 = no clipping); also passed to the authors' harness")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2), default=recipe.zero_stage,
                        help=f"optim.zero_stage: the engine's ZeRO stage on its one rank (default {recipe.zero_stage}, "
                             "the recipe's)")
    parser.add_argument("--targets", nargs="+", type=int, default=[5],
                        help="expressions per image (micro-batch of 2 images); several values = a sweep "
                             "(default 5: the reference, 7 [SEG] + 3 [REJ] per step)")
    parser.add_argument("--feature-cache", choices=tuple(CACHE_MODES), default="both",
                        help="time without the frozen-encoder cache, with it, or both (default both)")
    parser.add_argument("--images-per-step", nargs="+", type=int, default=[2],
                        help="micro-batch size in images, the engine's train_micro_batch_size_per_gpu (default 2, "
                             "the paper's; no gradient accumulation); several values = a sweep")
    parser.add_argument("--gradient-checkpointing", nargs="+", choices=("on", "off"), default=["on"],
                        help="activation checkpointing of the LLM decoder layers (default on; 'on off' = both)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (default 3, at least 3)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers building the batches (default: 0 on cpu, 4 on cuda)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch intra-op threads (default: the cores this process may use)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, images, expressions and phrasing")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_train"),
                        help="where the 32000-entry tokenizer is written (reused when already there)")
    parser.add_argument("--device-check", action="store_true",
                        help=f"the GPU check: shapes and targets {DEVICE_CHECK}, cache off and on, CUDA, bf16")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON report to this file")
    parser.add_argument("--child", default=None, help="internal: JSON list of configurations to time in this process")
    add_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with the device-dependent defaults filled in; a parser error for bad values."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.authors = AuthorsHarness.from_args(args, parser)
    if args.device_check:
        args.device = "cuda"
    if args.precision is None:
        args.precision = "fp32" if args.device == "cpu" else "bf16"
    if args.num_workers is None:
        args.num_workers = 4 if args.device == "cuda" else 0
    if args.steps < 3:
        parser.error("--steps must be >= 3")
    if args.threads < 1 or min(args.targets) < 1 or min(args.images_per_step) < 1 or args.num_workers < 0:
        parser.error("--threads, --images-per-step and every --targets value must be >= 1, --num-workers >= 0")
    if args.grad_clip < 0:
        parser.error("--grad-clip must be >= 0 (0 = no clipping)")
    if args.precision == "fp16" and args.device != "cuda":
        parser.error("--precision fp16 needs --device cuda (DeepSpeed's CPU accelerator refuses fp16 on most CPUs)")
    if args.shape not in CPU_SHAPES and args.device != "cuda":
        parser.error(f"--shape {args.shape} needs --device cuda (its random weights alone take tens of GB)")
    if args.device == "cuda" and args.child is None and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    return args


# ----------------------------------------------------------------- data
def slot_layout(targets_per_image: int, images: int = 2) -> list[list[bool]]:
    """Present/absent flags of the targets of the images of a step: for 2 images at 5 targets, 7
    present and 3 absent in all (4+1 and 3+2), as the reference step."""
    total = images * targets_per_image
    absent = ABSENT_PER_STEP[targets_per_image] * images // 2 if targets_per_image in ABSENT_PER_STEP else round(0.3 * total)
    flags = [index >= absent for index in range(total)]  # the first ``absent`` slots are absent
    return [flags[index::images] for index in range(images)]  # spread over the images


class BenchSteps(Dataset):
    """Step ``index`` -> the collated micro-batch of that step (same images in every run of a seed)."""

    def __init__(self, builder: SampleBuilder, collate: Collator, targets_per_image: int, images: int, seed: int) -> None:
        self.builder = builder
        self.collate = collate
        self.layout = slot_layout(targets_per_image, images)
        self.seed = seed

    def samples(self, index: int) -> list:
        rng = random.Random(f"{self.seed}/phrasing/{index}")
        samples = []
        for image_index, exists in enumerate(self.layout):
            image, targets = make_image((index, image_index), self.seed, exists)
            samples.append(self.builder.segmentation(image, targets, rng, {"image_id": f"{index}/{image_index}"}))
        return samples

    def __getitem__(self, index: int) -> GsvaBatch:
        return self.collate(self.samples(index))


def _unbatched(item: GsvaBatch) -> GsvaBatch:
    """The loader's collate: each item already is a collated micro-batch."""
    return item


# ----------------------------------------------------------------- timing
class PhaseClock:
    """Named boundaries of a step: CUDA events (no synchronisation until ``read``) or the host clock.

    A mark closes the phase it names (the time since the previous mark is added to it). Module
    hooks place the marks inside ``engine(batch)`` and its backward; ``before_engine_step`` closes
    the backward where ``backward_and_step`` calls ``engine.step``.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self.marks = [("start", self._now())]

    def mark(self, phase: str) -> None:
        if self.marks:
            self.marks.append((phase, self._now()))

    def read(self) -> dict[str, float]:
        """Seconds per phase (synchronises with the device)."""
        if self.cuda:
            torch.cuda.synchronize()
        seconds: dict[str, float] = {}
        for (_, before), (phase, after) in zip(self.marks, self.marks[1:]):
            elapsed = before.elapsed_time(after) / 1000 if self.cuda else after - before
            seconds[phase] = seconds.get(phase, 0.0) + elapsed
        self.marks = []
        return seconds

    def attach(self, model: GsvaModel) -> None:
        """The module hooks that mark the forward and backward phases inside ``model``."""
        encoder = model.visual_model.image_encoder
        encoder.register_forward_pre_hook(lambda *_: self.mark("sam_encode"))  # closes the pixel normalisation
        encoder.register_forward_hook(lambda *_: self.mark("sam_encode"))
        model.query_projector.register_forward_pre_hook(lambda *_: self.mark("llm_forward"))
        model.query_projector.register_full_backward_hook(lambda *_: self.mark("mask_backward"))


@contextmanager
def before_engine_step(engine: Any, callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` whenever ``engine.step`` is about to run: between the backward and the
    update of ``backward_and_step``, which runs unchanged (the engine's own ``step`` follows)."""
    step = engine.step

    def marked_step(*args: Any, **kwargs: Any) -> Any:
        callback()
        return step(*args, **kwargs)

    engine.step = marked_step
    try:
        yield
    finally:
        del engine.step  # the engine's own method again


def timed_step(
    engine: Any, batches: Iterator[GsvaBatch], clock: PhaseClock, device: torch.device
) -> tuple[dict[str, float], dict[str, float], GsvaBatch]:
    """One training step as ``train_loop`` runs it, ``engine(batch)`` then ``backward_and_step``:
    (seconds per phase + wall, losses, the host batch)."""
    wall_start = time.perf_counter()
    batch = next(batches)
    on_device = batch.to(device)
    data_wait = time.perf_counter() - wall_start
    clock.start()
    losses = engine(on_device)
    clock.mark("mask_forward")
    with before_engine_step(engine, lambda: clock.mark("llm_backward")):
        updated = backward_and_step(engine, losses.total)
    clock.mark("engine_step")
    if not updated:
        raise RuntimeError("the engine's step did not end a gradient accumulation (optim.grad_accum_steps must be 1)")
    values = {name: float(getattr(losses, name).detach()) for name in ("total", "ce", "bce", "dice")}
    seconds = {"data_wait": data_wait, **clock.read()}
    seconds["wall"] = time.perf_counter() - wall_start
    return seconds, values, batch


def fill_cache(
    model: GsvaModel, layout: FeatureLayout, steps: BenchSteps, count: int, directory: Path, device: torch.device
) -> FeatureCache:
    """The frozen-encoder features of the images of steps 0 .. count - 1, as precompute writes them."""
    with FeatureCacheWriter(directory, layout, "bench") as writer:
        for index in range(count):
            samples = steps.samples(index)
            sam, clip = encode_features(model, steps.collate(samples).to(device))
            for sample, sam_row, clip_row in zip(samples, sam, clip):
                writer.add(image_key(sample.sam_image, sample.clip_image), sam_row, clip_row)
    return FeatureCache.open(directory)


def batch_shape(batch: GsvaBatch, patches: int) -> dict[str, int]:
    """Conversations, LLM tokens (real and padded, patch features spliced in), answers, [SEG], [REJ]."""
    return {
        "conversations": int(batch.input_ids.shape[0]),
        "llm_tokens": int(batch.attention_mask.sum()) + batch.input_ids.shape[0] * (patches - 1),
        "llm_tokens_padded": batch.input_ids.shape[0] * (batch.input_ids.shape[1] + patches - 1),
        "answer_tokens": int(batch.answer_rows.numel()),
        "seg": int(batch.seg_rows.numel()),
        "rej": sum(batch.rejected_per_image),
    }


# ----------------------------------------------------------------- one process: one shape, several configurations
def matmul_tflops(device: torch.device) -> float | None:
    """Measured rate of an 8192³ bf16 matmul on random data (median of 10 after 3 warm-ups), CUDA only."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * 8192**3 / sorted(times)[len(times) // 2] / 1e12


def device_peak_tflops(device: torch.device) -> float | None:
    """The CUDA device's dense bf16 peak (``BF16_PEAK_TFLOPS``), None on the CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


# ----------------------------------------------------------------- the engine
def engine_config(cfg: Config, images: int, grad_clip: float, zero_stage: int) -> Config:
    """``cfg`` with the optimizer settings of the timed engine: a micro-batch of ``images``, no
    gradient accumulation (every step updates), clipping at ``grad_clip`` (0 = none) and ZeRO stage
    ``zero_stage``; the rest (AdamW's LR, betas, weight decay) is the recipe's ``OptimConfig``."""
    optim = dataclasses.replace(cfg.optim, micro_batch_size=images, grad_accum_steps=1, global_batch_size=None,
                                grad_clip=grad_clip, zero_stage=zero_stage)
    return dataclasses.replace(cfg, optim=optim)


def optimizer_chain(engine: Any) -> list[Any]:
    """``engine.optimizer`` and what it wraps (``.optimizer``), down to the torch optimizer that holds
    the states: ``engine.optimizer.optimizer`` under ZeRO 1/2 (``DeepSpeedZeroOptimizer``) and under
    the bf16/fp16 wrappers of stage 0, ``engine.optimizer`` itself for fp32 at stage 0."""
    chain = [engine.optimizer]
    while not isinstance(chain[-1], torch.optim.Optimizer):
        chain.append(chain[-1].optimizer)
    return chain


def optimizer_memory(engine: Any, model: torch.nn.Module) -> dict[str, int]:
    """Bytes the engine's optimizer holds beside the model: ``states`` (AdamW's moments and step
    counts, the ``state`` of the torch optimizer ending ``optimizer_chain``) and ``master_weights`` (the tensors it updates when
    they are not the model's own parameters: ZeRO's flat fp32 partitions, fp32 copies of bf16/fp16
    weights; 0 for fp32 at stage 0, where it steps the model's parameters)."""
    optimizer = optimizer_chain(engine)[-1]
    own = {id(parameter) for parameter in model.parameters()}
    states = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))
    master = sum(p.numel() * p.element_size() for group in optimizer.param_groups for p in group["params"] if id(p) not in own)
    return {"states": states, "master_weights": master}


def memory_report(engine: Any, model: torch.nn.Module, device: torch.device, zero_stage: int) -> dict[str, Any]:
    """The optimizer's states and master weights (MiB), and the peak: RSS on the CPU; on CUDA the
    allocator's peak and, at ZeRO stage 2, the 8-GPU per-rank estimate (module docstring)."""
    held = optimizer_memory(engine, model)
    report: dict[str, Any] = {
        "optimizer_state_mib": round(held["states"] / 2**20, 1),
        "master_weights_mib": round(held["master_weights"] / 2**20, 1),
    }
    if device.type != "cuda":
        report["peak_rss_mib"] = round(peak_rss_mib())
        return report
    peak = torch.cuda.max_memory_allocated(device)
    report["cuda_max_allocated_gib"] = round(peak / 2**30, 2)
    if zero_stage == 2:
        partitioned = held["states"] + held["master_weights"]  # 1/8 of it on each of 8 ranks
        report["zero2_8gpu_per_gpu_gib_estimate"] = round((peak - partitioned * 7 / 8) / 2**30, 2)
    return report


def cuda_sync_sites(engine: Any, batch: GsvaBatch) -> Counter[str]:
    """Synchronising CUDA calls of one engine step (``torch.cuda.set_sync_debug_mode``), by Python site."""
    sites: Counter[str] = Counter()

    def record(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        if "synchroniz" in str(message):
            sites[python_site(skip=(__file__, warnings.__file__))] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            backward_and_step(engine, engine(batch).total)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sites


def count_host_syncs(engine: Any, batches: Iterator[GsvaBatch], device: torch.device) -> dict[str, Any]:
    """Read-backs of one engine step (``HostSyncCounter``): the forward + ``engine.backward``, and the
    ``engine.step``, counted apart; on CUDA, the synchronising calls of a second step by site."""
    batch = next(batches).to(device)
    counter, before_step = HostSyncCounter(), Counter()
    with counter, before_engine_step(engine, lambda: before_step.update(counter.events)):
        backward_and_step(engine, engine(batch).total)
    parts = {"forward_backward": HostSyncCounter(), "engine_step": HostSyncCounter()}
    parts["forward_backward"].events = before_step
    parts["engine_step"].events = counter.events - before_step
    package = Path(__file__).resolve().parents[1]  # the gsva package
    report: dict[str, Any] = {
        part: {
            "read_backs_by_package": part_counter.by_package(),
            "read_backs_in_gsva": sum(part_counter.from_files_under(package).values()),
            "sites": sorted({f"{name} {origin}" for (name, origin) in part_counter.events}),
        }
        for part, part_counter in parts.items()
    }
    if device.type == "cuda":
        report["cuda_synchronizing_calls"] = dict(cuda_sync_sites(engine, next(batches).to(device)))
    return report


# ----------------------------------------------------------------- one process: one shape, several configurations
@dataclass
class ChildBench:
    """What a timing process builds once and each of its configurations reuses."""

    args: argparse.Namespace
    device: torch.device
    tokenizer: PreTrainedTokenizerBase
    model: GsvaModel
    cfg: Config
    builder: SampleBuilder
    clock: PhaseClock
    initial: dict[str, torch.Tensor]
    """The trainable weights as built: every configuration starts from them."""
    decoder_flops: int
    patches: int
    peak_tflops: float | None
    cache_root: Path
    layout: FeatureLayout | None = None
    """The frozen encoders' cache layout, computed at the first cached configuration."""


def set_up_child(args: argparse.Namespace, cache_root: Path) -> tuple[ChildBench, float]:
    """The process group (one rank), the shape's model with the phase hooks; and its build seconds."""
    device = init_distributed()
    if device.type != args.device:
        raise RuntimeError(f"--device {args.device}, but init_distributed chose {device}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer, model, prompts, cfg = build_reference_model(
        args.shape, args.work_dir / "tokenizer", args.precision, args.seed, args.device, args.gradient_checkpointing[0] == "on"
    )
    model.train()
    build_s = time.perf_counter() - start
    tower = model.mllm.vision_tower.config
    clock = PhaseClock(device)
    clock.attach(model)
    bench = ChildBench(
        args=args, device=device, tokenizer=tokenizer, model=model, cfg=cfg,
        builder=SampleBuilder(tokenizer, prompts, SampleSettings(sam_image_size=1024, clip_image_size=224, max_tokens=1024)),
        clock=clock, initial={name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad},
        decoder_flops=mask_decoder_flops_per_query(model), patches=(tower.image_size // tower.patch_size) ** 2,
        peak_tflops=device_peak_tflops(device), cache_root=cache_root,
    )
    return bench, build_s


def bench_batches(bench: ChildBench, targets: int, cached: bool, images: int) -> Iterator[GsvaBatch]:
    """The configuration's collated micro-batches (warm-up, timed steps, two host-sync steps), their
    frozen-encoder features cached first when ``cached``."""
    args, count = bench.args, bench.args.steps + 3
    pad = bench.tokenizer.pad_token_id
    steps = BenchSteps(bench.builder, Collator(pad, 1024), targets, images, args.seed)
    if cached:
        directory = bench.cache_root / f"targets{targets}-images{images}"
        bench.layout = bench.layout or encoder_layout(bench.model, bench.builder.settings.clip_image_size)  # hashes the encoders' weights: once
        cache = fill_cache(bench.model, bench.layout, steps, count, directory, bench.device)
        steps = BenchSteps(bench.builder, Collator(pad, 1024, cache), targets, images, args.seed)
    loader = DataLoader(
        steps, sampler=range(count), batch_size=None, collate_fn=_unbatched,
        num_workers=args.num_workers, pin_memory=bench.device.type == "cuda",
        prefetch_factor=4 if args.num_workers else None,
    )
    return iter(loader)


def time_configuration(
    bench: ChildBench, targets: int, cached: bool, images: int, first: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A fresh engine from the initial weights, one warm-up and ``--steps`` timed steps: the result
    row and, for the ``first`` configuration of the process, the engine's description and the
    host-sync report of one more step."""
    args, model, device = bench.args, bench.model, bench.device
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(bench.initial[name])
    cfg = engine_config(bench.cfg, images, args.grad_clip, args.zero_stage)
    engine = build_engine(model, cfg, device, lambda _step: 1.0)
    torch.manual_seed(args.seed)  # LoRA dropout: the same masks in every configuration
    batches = bench_batches(bench, targets, cached, images)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm_seconds, warm_losses, _ = timed_step(engine, batches, bench.clock, device)
    load_before = os.getloadavg()[0]
    timed = [timed_step(engine, batches, bench.clock, device) for _ in range(args.steps)]
    result = summarize(timed, model, bench.decoder_flops, bench.patches, cached, bench.peak_tflops)
    result.update({
        "targets_per_image": targets,
        "images_per_step": images,
        "gradient_checkpointing": args.gradient_checkpointing[0] == "on",
        "warmup": {"s": round(warm_seconds["wall"], 3), "losses": {k: round(v, 6) for k, v in warm_losses.items()}},
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **memory_report(engine, model, device, args.zero_stage),
    })
    once = None
    if first:
        chain = [f"{type(o).__module__}.{type(o).__qualname__}" for o in optimizer_chain(engine)]
        once = {"engine": {"deepspeed_config": deepspeed_config(cfg, device), "optimizer_chain": chain},
                "host_syncs": count_host_syncs(engine, batches, device)}
    engine.destroy()  # its gradient hooks off the model before the next configuration's engine
    return result, once


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``args.child``'s configurations (targets, cached, images) of one shape in this process."""
    configs = json.loads(args.child)
    results, once = [], None
    with tempfile.TemporaryDirectory(prefix="bench_train_cache_") as cache_root:
        bench, build_s = set_up_child(args, Path(cache_root))
        for targets, cached, images in configs:
            result, first_report = time_configuration(bench, targets, cached, images, first=once is None)
            once = once or first_report
            results.append(result)
            print(f"[bench_train] {args.shape} targets {targets} images {images} cache {'on' if cached else 'off'} "
                  f"checkpointing {args.gradient_checkpointing[0]}: {result['s_per_step']} s/step, "
                  f"MFU {result['mfu']}", file=sys.stderr, flush=True)
            gc.collect()  # the configuration's engine and loader
    model = bench.model
    return {
        "shape": args.shape,
        "build_s": round(build_s, 1),
        "results": results,
        "engine": once["engine"],
        "host_syncs": once["host_syncs"],
        "matmul_bf16_tflops_measured": matmul_tflops(bench.device),
        "device_bf16_peak_tflops": bench.peak_tflops,
        "model": {
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in bench.initial.values()),
            "embedding_rows": model.mllm.language_model.get_input_embeddings().weight.shape[0],
            "tokenizer_entries": len(bench.tokenizer),
            "dims": dataclasses.asdict(bench.cfg.model.tiny),
            "sam_type": bench.cfg.model.sam_type,
            "mask_decoder_forward_gflops_per_query": round(bench.decoder_flops / 1e9, 3),
        },
    }


def summarize(
    timed: list[tuple[dict[str, float], dict[str, float], GsvaBatch]], model: GsvaModel, decoder_flops: int,
    patches: int, cached: bool, peak_tflops: float | None,
) -> dict[str, Any]:
    """Means over the timed steps, throughput and FLOPs utilisation."""
    phase_mean = {name: sum(s.get(name, 0.0) for s, _, _ in timed) / len(timed) for name in PHASES}
    step_s = sum(s["wall"] for s, _, _ in timed) / len(timed)
    shapes = [batch_shape(batch, patches) for _, _, batch in timed]
    flops = [step_flops(model, batch, decoder_flops) for _, _, batch in timed]
    model_flops = sum(f.without_frozen_encoders() if cached else f.total for f in flops) / len(flops)
    achieved = model_flops / step_s / 1e12
    return {
        "feature_cache": cached,
        "steps_timed": len(timed),
        "s_per_step": round(step_s, 4),
        "phase_s_mean": {name: round(value, 4) for name, value in phase_mean.items()},
        "step_s": [round(s["wall"], 4) for s, _, _ in timed],
        "samples_per_s": round(timed[0][2].num_images / step_s, 3),
        "llm_tokens_per_s": round(sum(s["llm_tokens"] for s in shapes) / len(shapes) / step_s, 1),
        "model_tflop_per_step": round(model_flops / 1e12, 4),
        "model_tflop_per_step_parts": {k: round(v / 1e12, 4) for k, v in dataclasses.asdict(flops[0]).items()},
        "achieved_tflops": round(achieved, 3),
        "mfu": round(achieved / peak_tflops, 4) if peak_tflops else None,
        "losses_per_step": [{name: round(value, 6) for name, value in v.items()} for _, v, _ in timed],
        "batch_per_step": shapes,
    }


# ----------------------------------------------------------------- driver (parent)
def _child(args: argparse.Namespace, shape: str, checkpointing: str, configs: list[tuple[int, bool, int]]) -> dict[str, Any]:
    """Time ``configs`` in a fresh process (one rank of its own; CUDA hidden from a CPU run, so that
    ``init_distributed`` chooses the CPU and gloo); its report, or the error."""
    command = [
        sys.executable, "-m", "gsva.bench.train_step", "--child", json.dumps(configs), "--shape", shape,
        "--device", args.device, "--precision", args.precision, "--steps", str(args.steps),
        "--grad-clip", str(args.grad_clip), "--zero-stage", str(args.zero_stage),
        "--gradient-checkpointing", checkpointing, "--threads", str(args.threads),
        "--num-workers", str(args.num_workers), "--seed", str(args.seed), "--work-dir", str(args.work_dir),
    ]
    environment = dict(os.environ)
    if args.device == "cpu":
        environment.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    child = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True, env=environment)
    if child.returncode != 0:
        reason = "killed (out of memory?)" if child.returncode < 0 else f"exit status {child.returncode}"
        return {"error": reason, "configs": configs}
    return json.loads(child.stdout.strip().splitlines()[-1])


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per targets value: cache speed-up and the largest relative loss difference with/without it."""
    by_targets: dict[tuple, dict[bool, dict[str, Any]]] = {}
    for result in results:
        key = (result["targets_per_image"], result["images_per_step"], result["gradient_checkpointing"])
        by_targets.setdefault(key, {})[result["feature_cache"]] = result
    comparison = {}
    for (targets, images, checkpointing), pair in sorted(by_targets.items()):
        if len(pair) < 2:
            continue
        plain, cached = pair[False], pair[True]
        differences = [
            abs(a[name] - b[name]) / max(abs(a[name]), 1e-12)
            for a, b in zip(plain["losses_per_step"], cached["losses_per_step"])
            for name in a
        ]
        comparison[f"targets {targets}, images {images}, checkpointing {'on' if checkpointing else 'off'}"] = {
            "cache_speedup": round(plain["s_per_step"] / cached["s_per_step"], 3),
            "max_relative_loss_difference": float(f"{max(differences):.3g}"),
        }
    return comparison


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Every shape and configuration, each in child processes (``_child``), then the authors' step
    when asked: the report, and whether a configuration failed."""
    wall_start = time.perf_counter()
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    if args.device == "cpu" and load_at_start[0] > 0.5:
        log(f"[bench_train] warning: load average {load_at_start[0]} before the start: other processes use "
             "the CPU and the timings will be slower and noisier than on an idle machine")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    prepare_tokenizer(args.work_dir, args.seed)
    sweep = DEVICE_CHECK if args.device_check else {args.shape: args.targets}
    cache_modes = CACHE_MODES[args.feature_cache]
    shapes: dict[str, Any] = {}
    failed = False
    for shape, targets_list in sweep.items():
        configs = [(t, cached, images) for t in targets_list for images in args.images_per_step for cached in cache_modes]
        if args.device == "cuda":  # one process per shape and checkpointing setting
            log(f"[bench_train] {shape}: {len(configs)} configurations per checkpointing setting ...")
            parts = [_child(args, shape, checkpointing, configs) for checkpointing in args.gradient_checkpointing]
        else:  # a fresh process per configuration: its peak RSS is its own
            parts = [_child(args, shape, checkpointing, [config])
                     for checkpointing in args.gradient_checkpointing for config in configs]
        report = next((part for part in parts if "error" not in part), parts[0])
        report = {**report, "results": [r for part in parts for r in part.get("results", [])],
                  "errors": [part for part in parts if "error" in part]}
        failed |= bool(report["errors"])
        report["cache_comparison"] = compare(report["results"])
        shapes[shape] = report
        if args.json_out is not None:  # what is done so far survives an interrupted sweep
            write_json_atomic(args.json_out, {"partial": True, "shapes": shapes})
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "precision": args.precision,
        "threads": args.threads,
        "num_workers": args.num_workers,
        "torch": torch.__version__,
        "load_average_at_start": load_at_start,
        "step": (f"the DeepSpeed engine of gsva.engine.trainer.build_engine, ZeRO stage {args.zero_stage}, AdamW(lr=3e-4, "
                 f"betas=(0.9, 0.95), weight_decay=0), gradient clipping {args.grad_clip:g} (0 = none), no gradient "
                 "accumulation: engine(batch), then backward_and_step (engine.backward, engine.step)"),
        "data": {"image_size_hw": [IMAGE_HEIGHT, IMAGE_WIDTH], "phrasing": "SampleBuilder.segmentation (training)"},
        "shapes": shapes,
        "total_wall_s": round(time.perf_counter() - wall_start, 1),
    }
    if args.authors is not None:
        sweep = AUTHORS_DEVICE_CHECK if args.device_check else {args.shape: args.targets}
        summary["authors"] = {shape: authors_comparison(args, shape, targets, shapes.get(shape, {}).get("results", []))
                              for shape, targets in sweep.items()}
    return summary, failed


def authors_comparison(args: argparse.Namespace, shape: str, targets: list[int], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The authors' training step at ``shape`` for each of ``targets`` (their harness, one process
    per micro-batch size and checkpointing setting), timed right after ours; one row per
    configuration with both figures and the ratio to ours with and without the cache."""
    rows = []
    for images in args.images_per_step:
        for checkpointing in args.gradient_checkpointing:
            measured = args.authors.run("bench_model_gpu.py", [
                "--fixture", str(args.authors.fixture(args.work_dir)), "--shape", shape, "--device", args.device,
                "--precision", args.precision, "--targets", *map(str, targets), "--images-per-step", str(images),
                "--steps", str(args.steps), "--warmup", "1", "--gradient-checkpointing", checkpointing,
                "--grad-clip", f"{args.grad_clip:g}", "--threads", str(args.threads), "--seed", str(args.seed),
                "--work-dir", str(args.work_dir / "authors_model"),
            ])
            for config in measured["configs"]:
                row = {"targets_per_image": config["targets"], "images_per_step": images,
                       "gradient_checkpointing": checkpointing, "command": measured["command"]}
                if config["oom"]:
                    rows.append({**row, "authors": "out of memory", "authors_error": config["error"]})
                    continue
                mine = {("with cache" if r["feature_cache"] else "without cache"): r for r in ours
                        if r["targets_per_image"] == config["targets"] and r["images_per_step"] == images
                        and r["gradient_checkpointing"] == (checkpointing == "on")}
                authors_s = config["median_s_per_step"]
                ours_s = {mode: statistics.median(r["step_s"]) for mode, r in mine.items()}
                rows.append({
                    **row,
                    "authors_median_s_per_step": authors_s,
                    "authors_peak_memory": (f"{config['max_memory_allocated_gib']} GiB allocated" if "max_memory_allocated_gib" in config
                                            else f"{config['peak_rss_gib']} GiB RSS"),
                    "ours_median_s_per_step": ours_s,
                    "ours_peak_memory": {mode: (f"{r['cuda_max_allocated_gib']} GiB allocated" if "cuda_max_allocated_gib" in r
                                                else f"{r['peak_rss_mib'] / 1024:.3f} GiB RSS") for mode, r in mine.items()},
                    "ratio": {mode: ratio(seconds, authors_s) for mode, seconds in ours_s.items()},
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    """The command line: the JSON report on stdout (exit status 1 when a configuration failed)."""
    args = parse_args(argv)
    if args.child is not None:
        prepare_tokenizer(args.work_dir, args.seed)
        print(json.dumps(run_child(args)))
        return 0
    report, failed = run_all(args)
    print(json.dumps(report, indent=2))
    if args.json_out is not None:
        write_json_atomic(args.json_out, report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
