"""From a DeepSpeed checkpoint to a GSVA model directory (``scripts/export.py``).

``export_checkpoint(checkpoint, out)``: the fp32 weights of a ZeRO stage 0/1/2 checkpoint
(``<output_dir>/checkpoints`` — its ``latest`` tag — or one ``stepN`` directory) are consolidated
with DeepSpeed's ``zero_to_fp32`` utility, loaded strictly into the model rebuilt as the run
built it (``run_model``: every ``requires_grad`` parameter must be filled), and written as
``model.safetensors`` + ``config.yaml`` (``save_pretrained``) + ``config.json`` (step, finetune, lora_r,
source). The result loads with ``from_pretrained(out)`` and ``eval.py --weights out``.

The file holds exactly ``stored_parameter_names`` of that model: the trainable weights and the
frozen ones no checkpoint of the config holds (``GsvaModel.frozen_in_weights``: a
``model.mm_projector_init: random`` projector, or one read from ``model.init_weights``). Those
are taken from the module state DeepSpeed saved with the checkpoint (``mp_rank_00_model_states.pt``
holds every parameter, frozen ones included): the values the run trained with, never a new draw.

``merge_lora=True`` folds each LoRA adapter into its base weight (peft's merge,
``W + B·A·alpha/r``) and writes a self-contained model directory instead::

    out/llava/        an original-layout LLaVA backbone (``model.backbone: llava``): that layout,
                      merged LLM + mm_projector (config.json, model.safetensors; the LLM part loads
                      with LlamaForCausalLM); any other backbone: its transformers layout
                      (``save_pretrained``, e.g. a Qwen2_5_VLForConditionalGeneration directory, or a
                      LlavaForConditionalGeneration one for llava_hf); + the base tokenizer
    out/clip/         original-layout LLaVA only: the CLIP vision tower (HF directory, referenced by
                      mm_vision_tower)
    out/sam.pth       the whole SAM (segment_anything key layout); with model.mask_decoder: sam2,
                      out/sam2/ instead (the whole Sam2Model, transformers layout)
    out/model.safetensors + config.yaml   model.finetune=frozen and the paths above: the trainable set
                      of that policy (mask decoder, query projector) loads strictly
    out/config.json   the summary

The run's config is ``--config`` when given, else ``<output_dir>/final/config.yaml`` or
``<output_dir>/config.yaml`` (the DeepSpeed checkpoint does not hold it); the weights file its
``model.init_weights`` names must be there, as for ``--resume``. The model is rebuilt on the CPU in
the config's precision: exporting a 7B run needs that much host memory.
"""

from __future__ import annotations

import logging
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from torch import nn

from gsva.config import Config, load_config
from gsva.text.tokenizer import load_tokenizer
from gsva.atomic import write_json_atomic, write_torch_atomic
from gsva.engine.checkpointing import resolve_resume
from gsva.engine.deepspeed_files import check_deepspeed_files, load_deepspeed_file
from gsva.model.gsva import GsvaModel
from gsva.model.backbones import resolve_backbone
from gsva.model.mllm import save_llava_checkpoint
from gsva.model.directory import CONFIG_NAME, load_trainable_weights, save_pretrained, write_weights_dir
from gsva.pipeline import build_pipeline
from gsva.model.trainable import apply_trainable_policy

LOGGER = logging.getLogger(__name__)
SUMMARY_NAME = "config.json"
MODEL_STATES_NAME = "mp_rank_00_model_states.pt"


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    step: int
    source: Path
    """The checkpoint tag directory that was read."""
    num_tensors: int
    """Tensors in the written ``model.safetensors``."""
    merged_lora_modules: int


def locate_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints directory, tag) for a checkpoints directory (its ``latest``) or one tag dir."""
    checkpoints, tag = resolve_resume(Path(path), auto=False)  # without auto: found, or an error
    return checkpoints, tag


def find_run_config(checkpoints: Path) -> Path:
    """The config of the run that wrote ``checkpoints`` (``<output_dir>/checkpoints``)."""
    run_dir = checkpoints.parent
    for candidate in (run_dir / "final" / CONFIG_NAME, run_dir / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no config.yaml found for {checkpoints} (looked in {run_dir / 'final'} and {run_dir}); pass --config"
    )


def consolidated_fp32_state(checkpoints: Path, tag: str) -> dict[str, torch.Tensor]:
    """The fp32 weights of one checkpoint, whole. ZeRO 1/2 (and bf16 at stage 0) keep fp32
    master partitions in ``*zero_pp_rank_*_optim_states.pt``: DeepSpeed's ``zero_to_fp32``
    merges them. Plain stage 0 in fp32 has no partitions: the module state is the fp32 weights.
    Every file is read with ``weights_only`` first (``gsva.engine.deepspeed_files``)."""
    tag_dir = checkpoints / tag
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        check_deepspeed_files(tag_dir)  # zero_to_fp32 unpickles without restriction
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=tag, exclude_frozen_parameters=True)
    model_states = tag_dir / MODEL_STATES_NAME
    if not model_states.is_file():
        raise FileNotFoundError(f"{tag_dir}: neither ZeRO optimizer partitions nor {model_states.name}")
    module = load_deepspeed_file(model_states)["module"]
    if any(tensor.is_floating_point() and tensor.dtype != torch.float32 for tensor in module.values()):
        raise ValueError(f"{tag_dir}: stage-0 checkpoint in reduced precision without fp32 master weights")
    return module


def checkpoint_step(checkpoints: Path, tag: str) -> int:
    match = re.fullmatch(r"step(\d+)", tag)
    if match:
        return int(match.group(1))
    module = load_deepspeed_file(checkpoints / tag / MODEL_STATES_NAME, mmap=True)
    return int(module["global_steps"])


def run_model(cfg: Config) -> GsvaModel:
    """The model as training built it before its first step: rebuilt from ``cfg``, with the weights
    ``model.init_weights`` names loaded (they may bring frozen weights, such as the random projector
    of the run a finetuning starts from, which join ``frozen_in_weights``)."""
    model = build_pipeline(cfg).model
    if cfg.model.init_weights is not None:
        load_trainable_weights(model, cfg.model.init_weights)
    return model


def copy_weights(
    model: GsvaModel, names: set[str], state: dict[str, torch.Tensor], source: Path, what: str, hint: str
) -> dict[str, torch.Tensor]:
    """Copy ``state[name]`` into each parameter ``name`` of ``model``; all must be in ``state``
    (ValueError naming ``source``, ``what`` is missing and the ``hint``) with matching shapes.
    Returns those tensors in fp32, by name."""
    missing = sorted(names - set(state))
    if missing:
        raise ValueError(f"{source}: {len(missing)} {what} are not in it, e.g. {missing[:5]}; {hint}")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            tensor, target = state[name], parameters[name]
            if tensor.shape != target.shape:
                raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}")
            target.copy_(tensor.to(target.dtype))
    return {name: state[name].float().contiguous() for name in sorted(names)}


def load_consolidated(model: GsvaModel, state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Copy ``state`` into every trainable parameter of ``model``; all must be there. Returns
    the fp32 tensors of the trainable parameters (the other entries of ``state`` are dropped)."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return copy_weights(
        model, trainable, state, source, "trainable weights of the model rebuilt from the config", "is this the run's config?"
    )


def load_frozen_in(model: GsvaModel, checkpoints: Path, tag: str) -> dict[str, torch.Tensor]:
    """Copy the ``frozen_in_weights`` of ``model`` from the checkpoint's module state (the values
    the run trained with; all must be there). Returns them in fp32, by name."""
    names = set(model.frozen_in_weights)
    if not names:
        return {}
    model_states = checkpoints / tag / MODEL_STATES_NAME
    module = load_deepspeed_file(model_states, mmap=zipfile.is_zipfile(model_states))["module"]
    return copy_weights(
        model, names, module, model_states, "frozen weights that no checkpoint of the config holds",
        "the module state should hold every parameter of the model, frozen ones included",
    )


def merge_lora_(module: nn.Module) -> int:
    """Fold every peft LoRA layer inside ``module`` into its base layer and put the base layer
    back in its place (plain ``nn.Linear`` again). Returns the number of merged layers."""
    merged = 0
    for name, child in list(module.named_modules()):
        if not isinstance(child, LoraLayer):
            continue
        child.merge(safe_merge=True)
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, child.get_base_layer())
        merged += 1
    return merged


def write_mask_model(model: GsvaModel, mask_decoder: str, out: Path) -> dict[str, str]:
    """Write the whole mask model as its checkpoint: SAM as ``out/sam.pth`` (segment_anything
    layout), SAM2 as ``out/sam2/`` (transformers ``save_pretrained``); returns the config keys
    that name it."""
    if mask_decoder == "sam2":
        model.visual_model.save_pretrained(str(out / "sam2"))
        return {"sam2_path": str((out / "sam2").resolve())}
    sam_file = out / "sam.pth"
    write_torch_atomic(sam_file, {name: tensor.cpu() for name, tensor in model.visual_model.state_dict().items()})
    return {"sam_checkpoint": str(sam_file.resolve())}


def write_merged(model: GsvaModel, cfg: Config, out: Path) -> tuple[Config, int]:
    """Merge LoRA into ``model`` (in place) and write the self-contained layout; returns the
    config of the written directory and the number of merged layers."""
    merged = merge_lora_(model.mllm.language_model)
    llava_dir, clip_dir = out / "llava", out / "clip"
    if resolve_backbone(cfg.model.backbone, cfg.model.llava_path) == "llava":
        save_llava_checkpoint(model.mllm, llava_dir, clip_dir)  # the original layout, its CLIP tower apart
        vision_tower_path = str(clip_dir.resolve())
    else:
        model.mllm.save_pretrained(llava_dir)  # the checkpoint's own transformers layout (llava-hf included)
        vision_tower_path = None
    # The base tokenizer (task tokens are added again on load, with the same ids).
    load_tokenizer(cfg.model.tokenizer_path or cfg.model.llava_path, cfg.data.model_max_length).save_pretrained(str(llava_dir))
    mask_model = write_mask_model(model, cfg.model.mask_decoder, out)
    model_cfg = replace(
        cfg.model,
        llava_path=str(llava_dir.resolve()),
        tokenizer_path=str(llava_dir.resolve()),
        vision_tower_path=vision_tower_path,
        finetune="frozen",
        init_weights=None,
        **mask_model,
    )
    merged_cfg = replace(cfg, model=model_cfg, components=replace(cfg.components, enabled=False))
    # The frozen-LLM policy on the merged model: only what it trains is stored beside.
    apply_trainable_policy(model, model_cfg)
    return merged_cfg, merged


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    merge_lora: bool = False,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
) -> ExportResult:
    """Consolidate ``checkpoint`` into the model directory ``out`` (see the module docstring)."""
    checkpoints, tag = locate_checkpoint(checkpoint)
    out = Path(out)
    cfg = load_config(Path(config) if config else find_run_config(checkpoints), overrides or [])
    LOGGER.info("consolidating %s", checkpoints / tag)
    state = consolidated_fp32_state(checkpoints, tag)
    model = run_model(cfg)
    stored = load_consolidated(model, state, checkpoints / tag)
    del state
    stored.update(load_frozen_in(model, checkpoints, tag))  # now every stored_parameter_names(model)
    model.eval()
    merged = 0
    if merge_lora:
        merged_cfg, merged = write_merged(model, cfg, out)
        weights = save_pretrained(model, merged_cfg, out)
    else:
        weights = write_weights_dir(stored, cfg, out)  # the fp32 master weights, whatever the precision
    step = checkpoint_step(checkpoints, tag)
    summary = {
        "step": step,
        "finetune": cfg.model.finetune,
        "lora_r": cfg.model.lora_r,
        "merged_lora": merge_lora,
        "merged_lora_modules": merged,
        "source": str((checkpoints / tag).resolve()),
        "zero_stage": cfg.optim.zero_stage,
        "precision": cfg.model.precision,
    }
    write_json_atomic(out / SUMMARY_NAME, summary)
    with safe_open(str(weights), framework="pt") as handle:
        num_tensors = len(list(handle.keys()))
    return ExportResult(directory=out, step=step, source=checkpoints / tag, num_tensors=num_tensors, merged_lora_modules=merged)
