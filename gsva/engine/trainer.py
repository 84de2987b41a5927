"""The training recipe: DeepSpeed (ZeRO-2 by default) on CUDA/NCCL or CPU/gloo, one code path.

``train(cfg)`` reads as four stages, in the shape of a torchtune recipe:

- ``setup``: check the config, write it to ``<output_dir>/config.yaml``, build tokenizer + model,
  the training data and the DeepSpeed engine (AdamW, warm-up then linear decay), resume;
- ``train_loop``: micro-batches through ``backward_and_step`` (the engine's accumulation,
  clipping and update), logged to TensorBoard and ``history.jsonl``, evaluated every
  ``eval.every`` updates (or each epoch), checkpointed every ``schedule.save_every``;
- ``finish``: the consolidated trainable weights ``final/model.safetensors`` and the final
  evaluation (or, when a signal stopped the run, where to continue from);
- cleanup: the TensorBoard writer is closed whatever happened.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from gsva.batch import GsvaBatch
from gsva.config import Config, check_global_batch
from gsva.data.bad_samples import BadSampleTally
from gsva.data.catalog import check_dataset_names, dataset_entry, rejection_ablation_datasets
from gsva.data.mixture import FullPassSampler, FullPassStream, MixtureSampler, MixtureStream
from gsva.data.sample_builder import SampleBuilder
from gsva.data.samples import Collator
from gsva.engine.checkpointing import all_finite, load_rng_state, prune_checkpoints, remove_staging, resolve_resume, save_checkpoint
from gsva.engine.deepspeed_files import check_deepspeed_files
from gsva.distributed import barrier, is_main, rank, world_size
from gsva.engine.distributed import init_distributed
from gsva.engine.interruptions import NonFiniteGuard, StopRequest, agree
from gsva.evaluation.benchmarks import parse_benchmark
from gsva.evaluation.report import evaluate_benchmark
from gsva.evaluation.settings import EvalSettings
from gsva.feature_cache import FeatureCache
from gsva.model.encoder_features import encoder_layout
from gsva.model.gsva import GsvaModel
from gsva.model.directory import CONFIG_NAME, WEIGHTS_NAME, load_trainable_weights, save_pretrained, write_config
from gsva.model.trainable import SAM_SIDE_TRAINED
from gsva.pipeline import build_pipeline

LOGGER = logging.getLogger(__name__)


@dataclass
class TrainResult:
    cfg: Config
    """The configuration as run (component paths filled in)."""
    model: GsvaModel
    builder: SampleBuilder
    """The tokenizer and prompts of the model, and the sample settings of the config."""
    device: torch.device
    steps: int
    history: list[dict[str, float]]
    weights: Path
    """``final/model.safetensors``, or the checkpoints directory of a stopped run."""
    evaluations: dict[str, dict[str, Any] | None]
    """Summary of each benchmark scored at the end (rank 0; None on the other ranks)."""
    stopped_by: str | None = None
    """The signal that stopped the run early (checkpoint saved; continue with --resume auto)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def deepspeed_config(cfg: Config, device: torch.device) -> dict[str, Any]:
    optim = cfg.optim
    return {
        "train_micro_batch_size_per_gpu": optim.micro_batch_size,
        "gradient_accumulation_steps": optim.grad_accum_steps,
        "gradient_clipping": optim.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "weight_decay": optim.weight_decay,
                "torch_adam": device.type == "cpu",
            },
        },
        "zero_optimization": {"stage": optim.zero_stage, "contiguous_gradients": True, "overlap_comm": device.type == "cuda"},
        "bf16": {"enabled": cfg.model.precision == "bf16"},
        "fp16": {"enabled": cfg.model.precision == "fp16"},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


def parameter_groups(model: GsvaModel, cfg: Config) -> list[dict[str, Any]]:
    """Trainable parameters: the LLM side at ``lr``, the SAM side at ``lr * sam_side_lr_scale``."""
    llm, sam_side = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (sam_side if name.startswith(SAM_SIDE_TRAINED) else llm).append(parameter)
    groups = [{"params": llm, "lr": cfg.optim.lr}, {"params": sam_side, "lr": cfg.optim.lr * cfg.optim.sam_side_lr_scale}]
    return [group for group in groups if group["params"]]


def warmup_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier of optimizer step ``step`` (0-based): linear warm-up over ``warmup_steps``,
    then linear decay that would reach 0 at ``total_steps``."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        return max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))

    return multiplier


def lr_schedule(cfg: Config, total_steps: int) -> Callable[[int], float]:
    """The recipe's LR multiplier: its decay ends at ``schedule.lr_decay_steps`` when set (the
    released code's fixed 5,000), else at the run's own ``total_steps``."""
    decay_steps = cfg.schedule.lr_decay_steps if cfg.schedule.lr_decay_steps is not None else total_steps
    return warmup_linear_decay(cfg.optim.warmup_steps, decay_steps)


def build_engine(model: GsvaModel, cfg: Config, device: torch.device, lr_multiplier: Callable[[int], float]):
    """The DeepSpeed engine that trains ``model``: AdamW over ``parameter_groups``, gradient
    accumulation and clipping as ``cfg.optim`` sets them, the LR of optimizer step ``k`` equal to
    each group's base LR times ``lr_multiplier(k)``."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=parameter_groups(model, cfg),
        config=deepspeed_config(cfg, device),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier),
    )
    return engine


def backward_and_step(engine, loss: torch.Tensor) -> bool:
    """One micro-step's backward (DeepSpeed scales ``loss`` by 1 / accumulation) and the engine's
    step, which updates the weights (clipped, then AdamW) at the end of each accumulation; returns
    whether this micro-step ended one."""
    previous = engine.global_steps
    engine.backward(loss)
    engine.step()
    return engine.global_steps != previous


def training_stream(cfg: Config, builder: SampleBuilder) -> MixtureStream | FullPassStream:
    """``schedule.mode: steps`` -> the weighted task mixture; ``epochs`` -> full passes over
    every listed dataset (the tasks' weights then play no role)."""
    tasks = {
        task: [dataset_entry(name).open_training(cfg.data.dataset_dir, cfg.data.train_split, builder) for name in spec.datasets]
        for task, spec in cfg.data.tasks.items()
    }
    for task, datasets in tasks.items():
        LOGGER.info("task %s: %s", task, ", ".join(f"{d.name} ({len(d)} images)" for d in datasets))
    if cfg.schedule.mode == "steps":
        return MixtureStream(tasks, {task: spec.weight for task, spec in cfg.data.tasks.items()}, cfg.run.seed, cfg.data.on_bad_sample)
    return FullPassStream([dataset for datasets in tasks.values() for dataset in datasets], cfg.run.seed, cfg.data.on_bad_sample)


def training_sampler(stream: MixtureStream | FullPassStream, cfg: Config, start_micro_step: int) -> MixtureSampler | FullPassSampler:
    """This rank's endless micro-batches of keys, from ``start_micro_step`` (resume)."""
    size = cfg.optim.micro_batch_size
    if isinstance(stream, MixtureStream):
        return MixtureSampler(size, rank(), world_size(), start_micro_step)
    lengths = [stream.length_hint(position) for position in range(len(stream))] if cfg.data.group_by_length else None
    return FullPassSampler(len(stream), size, rank(), world_size(), cfg.run.seed, start_micro_step, lengths)


def open_feature_cache(cfg: Config, model: GsvaModel) -> FeatureCache | None:
    """The cache named by ``data.feature_cache`` (checked against the model's encoders), or None."""
    if cfg.data.feature_cache is None:
        return None
    cache = FeatureCache.open(cfg.data.feature_cache)
    cache.check_layout(encoder_layout(model, cfg.data.clip_image_size))
    LOGGER.info("feature cache %s: frozen-encoder outputs of %d images", cache.root, len(cache))
    return cache


def training_batches(
    stream: MixtureStream | FullPassStream,
    sampler: MixtureSampler | FullPassSampler,
    cfg: Config,
    builder: SampleBuilder,
    feature_cache: FeatureCache | None,
    device: torch.device,
) -> Iterator[GsvaBatch]:
    """Collated micro-batches from ``data.num_workers`` persistent workers, ``data.prefetch_factor``
    batches ahead each, pinned for asynchronous copies to a GPU."""
    workers = cfg.data.num_workers
    loader = DataLoader(
        stream,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=Collator(builder.pad_token_id, cfg.data.sam_image_size, feature_cache),
        persistent_workers=workers > 0,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
    )
    return iter(loader)


def total_optimizer_steps(sampler: MixtureSampler | FullPassSampler, cfg: Config) -> int:
    if isinstance(sampler, MixtureSampler):
        return cfg.schedule.steps
    return math.ceil(cfg.schedule.epochs * sampler.batches_per_epoch / cfg.optim.grad_accum_steps)


def evaluate_benchmarks(
    cfg: Config, model: GsvaModel, builder: SampleBuilder, device: torch.device, writer: SummaryWriter | None, step: int, final: bool
) -> dict[str, dict[str, Any] | None]:
    """Score ``eval.benchmarks`` as the ``eval:`` section says, on every rank; the final evaluation
    also writes its reports and overlays under ``<output_dir>/eval`` (named as ``eval.py`` names
    them). The headline metrics go to TensorBoard at ``step``."""
    output_root = str(Path(cfg.run.output_dir) / "eval") if final else None
    settings = EvalSettings(options=cfg.eval, output_root=output_root)
    summaries = {
        benchmark.name: evaluate_benchmark(model, builder, benchmark, cfg.data.dataset_dir, settings, device)
        for benchmark in map(parse_benchmark, cfg.eval.benchmarks)
    }
    if writer is not None:
        for name, summary in summaries.items():
            for key, value in summary["headline"].items():
                writer.add_scalar(f"eval_{name}/{key}", value, step)
        writer.flush()
    return summaries


def resume_from(engine, checkpoint_dir: Path, resume: str | None) -> tuple[int, Path | None]:
    """Load the checkpoint ``resume`` names ("auto": the run's latest complete one, if any);
    returns the micro-step (data position) to continue from and the checkpoint's directory."""
    if resume is None:
        return 0, None
    found = resolve_resume(checkpoint_dir if resume == "auto" else Path(resume), auto=resume == "auto")
    if found is None:
        LOGGER.info("--resume auto: no complete checkpoint under %s yet; starting from the beginning", checkpoint_dir)
        return 0, None
    load_dir, tag = found
    check_deepspeed_files(load_dir / tag)  # DeepSpeed itself unpickles without restriction
    path, client_state = engine.load_checkpoint(str(load_dir), tag=tag)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint found under {load_dir / tag}")
    LOGGER.info("resumed from %s at optimizer step %d", path, engine.global_steps)
    return client_state["micro_step"], load_dir / tag


def restore_random_state(checkpoint: Path | None) -> None:
    """This rank's RNG states as saved with ``checkpoint`` (dropout masks continue exactly). Called
    once the data iterator exists: creating it draws from the torch generator, as it did at the
    start of the original run."""
    if checkpoint is not None and not load_rng_state(checkpoint):
        LOGGER.warning("%s holds no random state for rank %d: dropout masks will differ from the original run", checkpoint, rank())


def checkpoint(engine, checkpoint_dir: Path, step: int, micro_step: int, cfg: Config) -> None:
    """Save step ``step`` (refusing non-finite weights) and apply the retention policy."""
    if not all_finite(engine.module):
        raise FloatingPointError(
            f"step {step}: trainable weights hold NaN or inf; not saving them over the checkpoints in "
            f"{checkpoint_dir}. Resume from the last one with a lower optim.lr"
        )
    save_checkpoint(engine, checkpoint_dir, f"step{step}", {"micro_step": micro_step})
    if is_main():
        prune_checkpoints(checkpoint_dir, cfg.schedule.keep_last)


@dataclass
class LogWindow:
    """What the loop gathers between two logged optimizer steps: the losses of every micro-step
    that was trained (kept on the device), how many of those read cached features, and where and
    when the window began."""

    start_step: int
    started: float = field(default_factory=time.time)
    losses: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {key: [] for key in ("total", "ce", "bce", "dice")})
    cached_batches: int = 0

    def add(self, losses, cached: bool) -> None:
        """One trained micro-step's losses (``GsvaLosses``) and whether its batch was cached."""
        for key, values in self.losses.items():
            values.append(getattr(losses, key).detach())
        self.cached_batches += cached


def log_step(engine, cfg: Config, step: int, window: LogWindow, writer: SummaryWriter | None, output_dir: Path) -> dict[str, float]:
    """Read back the window's losses (the logging interval's only extra read-back), append them to
    ``history.jsonl`` and TensorBoard; returns the record. Rates are per step of the window, which
    is shorter than ``run.log_every`` at the run's last step and after a resume."""
    seconds, steps = time.time() - window.started, step - window.start_step
    means = {key: float(torch.stack(values).float().mean()) for key, values in window.losses.items()}
    samples = steps * cfg.optim.grad_accum_steps * cfg.optim.micro_batch_size * world_size()
    record = {
        "step": step, **means, "lr": engine.get_lr()[0], "seconds_per_step": seconds / steps,
        "samples_per_second": samples / seconds, "cached_batch_fraction": window.cached_batches / len(window.losses["total"]),
    }
    if is_main():
        with (output_dir / "history.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in means.items():
            writer.add_scalar(f"train/{key}_loss", value, step)
        for key in ("lr", "cached_batch_fraction", "samples_per_second"):
            writer.add_scalar(f"train/{key}", record[key], step)
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
    return record


@dataclass
class TrainingRun:
    """What ``setup`` builds for the loop: the engine and its data, where the run writes, and
    where it starts (``micro_step`` > 0 after a resume)."""

    cfg: Config
    device: torch.device
    builder: SampleBuilder
    engine: Any
    """The DeepSpeed engine; ``engine.module`` is the ``GsvaModel``."""
    sampler: MixtureSampler | FullPassSampler
    batches: Iterator[GsvaBatch]
    total_steps: int
    micro_step: int
    output_dir: Path
    writer: SummaryWriter | None
    """TensorBoard, on rank 0 only."""

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"


def setup(cfg: Config, resume: str | None) -> TrainingRun:
    """Check the config, write it beside the run, build the model, its data and the engine, and
    resume from ``resume`` (a checkpoint directory or "auto"; None starts afresh)."""
    check_dataset_names(cfg)
    device = init_distributed()
    check_global_batch(cfg, world_size())
    ablated = rejection_ablation_datasets(cfg)
    if ablated and is_main():
        LOGGER.warning("model.use_rej_token=false: the no-target expressions of %s are left out of the training prompts", ablated)
    seed_everything(cfg.run.seed + rank())
    output_dir = Path(cfg.run.output_dir)
    if is_main():
        write_config(cfg, output_dir / CONFIG_NAME)  # the resolved config, for export and resume
        LOGGER.info("config as run (also in %s):\n%s", output_dir / CONFIG_NAME, (output_dir / CONFIG_NAME).read_text())
    pipeline = build_pipeline(cfg)
    if cfg.model.init_weights is not None:
        load_trainable_weights(pipeline.model, cfg.model.init_weights)
        LOGGER.info("started from the weights in %s", cfg.model.init_weights)
    feature_cache = open_feature_cache(cfg, pipeline.model)
    stream = training_stream(cfg, pipeline.builder)
    sampler = training_sampler(stream, cfg, 0)
    total_steps = total_optimizer_steps(sampler, cfg)
    engine = build_engine(pipeline.model, cfg, device, lr_schedule(cfg, total_steps))
    micro_step, resumed_checkpoint = resume_from(engine, output_dir / "checkpoints", resume)
    if is_main():
        remove_staging(output_dir / "checkpoints")
    output_dir.mkdir(parents=True, exist_ok=True)
    sampler = sampler.starting_at(micro_step)
    batches = training_batches(stream, sampler, cfg, pipeline.builder, feature_cache, device)
    restore_random_state(resumed_checkpoint)
    writer = SummaryWriter(str(output_dir / "tensorboard")) if is_main() else None
    return TrainingRun(cfg, device, pipeline.builder, engine, sampler, batches, total_steps, micro_step, output_dir, writer)


def train_loop(run: TrainingRun) -> tuple[list[dict[str, float]], str | None]:
    """Micro-steps until ``run.total_steps`` optimizer updates, or until a stop signal, acted on at
    the next update; logs, evaluates and checkpoints as the config says. Returns the log records
    and the signal that stopped the run (None when it ran to the end)."""
    cfg, engine = run.cfg, run.engine
    progress = tqdm(total=run.total_steps, initial=engine.global_steps, desc="train", disable=not is_main())
    window, history, stopped_by = LogWindow(engine.global_steps), [], None
    guard, bad_samples = NonFiniteGuard(cfg.optim.max_consecutive_nonfinite), BadSampleTally()
    with StopRequest() as stop:
        while engine.global_steps < run.total_steps:
            batch = next(run.batches)
            for skipped in bad_samples.record(batch.metadata):
                LOGGER.warning("skipped a bad sample: %s: %s", skipped["source"], skipped["reason"])
            bad_samples.check(cfg.data.max_bad_samples)
            losses = engine(batch.to(run.device))
            run.micro_step += 1
            finite, stop_requested = agree(losses.total, stop.requested)  # the one read-back per micro-step
            guard.record(finite, run.micro_step)
            if stop_requested and stopped_by is None:  # acted on at the next optimizer step
                stopped_by = stop.signal_name or "a signal on another rank"
            if not finite:
                LOGGER.warning("micro-step %d: non-finite loss, step skipped (%d so far)", run.micro_step, guard.skipped)
                if run.writer is not None:
                    run.writer.add_scalar("train/skipped_nonfinite_steps", guard.skipped, engine.global_steps)
                continue
            updated = backward_and_step(engine, losses.total)
            window.add(losses, cached=batch.sam_features is not None)  # read back only at logging steps
            if not updated:  # inside a gradient accumulation
                continue
            step = engine.global_steps
            progress.update(1)
            if step % cfg.run.log_every == 0 or step == run.total_steps:
                history.append(log_step(engine, cfg, step, window, run.writer, run.output_dir))
                progress.set_postfix(loss=f"{history[-1]['total']:.3f}", ce=f"{history[-1]['ce']:.3f}", dice=f"{history[-1]['dice']:.3f}")
                window = LogWindow(step)
            after_update(run, step, stopped_by)
            if stopped_by is not None:
                break
    progress.close()
    if bad_samples.count or bad_samples.dropped_expressions:
        LOGGER.warning("rank %d: %s", rank(), bad_samples.summary())
    return history, stopped_by


def after_update(run: TrainingRun, step: int, stopped_by: str | None) -> None:
    """What follows optimizer update ``step``: an evaluation when one is due (never at the last
    step, which the final evaluation scores, nor when stopping), a checkpoint every
    ``schedule.save_every`` updates, at the last one and when stopping."""
    cfg = run.cfg
    if step < run.total_steps and stopped_by is None and _evaluation_due(cfg, run.sampler, step, run.micro_step):
        evaluate_benchmarks(cfg, run.engine.module, run.builder, run.device, run.writer, step, final=False)
    if stopped_by is not None or step % cfg.schedule.save_every == 0 or step == run.total_steps:
        checkpoint(run.engine, run.checkpoint_dir, step, run.micro_step, cfg)


def finish(run: TrainingRun, history: list[dict[str, float]], stopped_by: str | None) -> TrainResult:
    """A run that ran to the end: the consolidated trainable weights in ``<output_dir>/final`` and
    the final evaluation. A stopped one: where to continue from."""
    engine, cfg = run.engine, run.cfg
    result = TrainResult(
        cfg=cfg, model=engine.module, builder=run.builder, device=run.device, steps=engine.global_steps,
        history=history, weights=run.checkpoint_dir, evaluations={}, stopped_by=stopped_by,
    )
    if stopped_by is not None:
        if is_main():
            LOGGER.warning(
                "stopped by %s after optimizer step %d; checkpoint %s. Continue with the same command and --resume auto",
                stopped_by, engine.global_steps, run.checkpoint_dir / f"step{engine.global_steps}",
            )
        return result
    final_dir = run.output_dir / "final"
    if is_main():
        save_pretrained(engine.module, cfg, final_dir)
    barrier()
    result.weights = final_dir / WEIGHTS_NAME
    if cfg.eval.at_end:
        result.evaluations = evaluate_benchmarks(cfg, engine.module, run.builder, run.device, run.writer, engine.global_steps, final=True)
    return result


def train(cfg: Config, resume: str | None = None) -> TrainResult:
    """Run the recipe; ``resume`` is a checkpoint directory or "auto" (the run's latest)."""
    run = setup(cfg, resume)
    try:
        history, stopped_by = train_loop(run)
        return finish(run, history, stopped_by)
    finally:
        if run.writer is not None:
            run.writer.close()


def _evaluation_due(cfg: Config, sampler: MixtureSampler | FullPassSampler, step: int, micro_step: int) -> bool:
    """``eval.every`` optimizer steps, or (epochs mode) ``eval.each_epoch`` at each epoch end."""
    if cfg.eval.every and step % cfg.eval.every == 0:
        return True
    return cfg.eval.each_epoch and isinstance(sampler, FullPassSampler) and micro_step % sampler.batches_per_epoch == 0
