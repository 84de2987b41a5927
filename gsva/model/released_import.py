"""Import the authors' released weights into a GSVA model directory that ``eval.py`` reads (nothing
else needed at run time): the library side of ``scripts/import_weights.py``.

Written under ``out``: ``llava/`` (original LLaVA layout: config.json and tokenizer from the LLaVA
directory, the LISA directory itself for lisa-hf, and the decoder base weights, embeddings,
lm_head and projector from the released file; LoRA is NOT merged), ``clip/`` (config from the
vision tower directory, weights from the released file), ``sam.pth`` (segment_anything layout, type
inferred from the shapes), ``model.safetensors`` (the trainable weights: LoRA, embeddings, lm_head,
mask decoder, query projector) and ``config.yaml``. Any unplaced, missing or mis-shaped key, or a
tokenizer whose task-token ids differ from the rows of the file, refuses the import before anything
is written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gsva.config import ModelConfig, load_config
from gsva.text.tokenizer import add_task_tokens, load_tokenizer, task_token_strings
from gsva.model import released
from gsva.model.build import resolve_image_markers
from gsva.model.directory import CONFIG_NAME, write_config

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
LISA_ONLY_FIELDS = ("out_dim", "train_mask_decoder", "vision_pretrained", "seg_token_idx", "vision_tower")


def check_token_rows(tokenizer_dir: Path, tokens: list[str], rows: int, model_max_length: int) -> dict[str, int]:
    """Our tokenizer (as ``build_gsva`` builds it) must give the task tokens the ids of the file's rows."""
    tokenizer = load_tokenizer(tokenizer_dir, model_max_length)
    expected = released.authors_token_ids(tokenizer.get_vocab(), tokens)
    ours = add_task_tokens(tokenizer, tokens)
    problems = []
    if ours != expected:
        problems.append(f"task-token ids {ours} differ from the authors' order {expected}")
    if len(tokenizer) != rows:
        problems.append(f"the tokenizer has {len(tokenizer)} entries with {tokens}, the embedding table {rows} rows")
    if problems:
        raise released.ReleasedWeightsError(f"{tokenizer_dir}: " + "; ".join(problems))
    return ours


@dataclass(frozen=True)
class ImportRequest:
    """What to import (the command line of ``scripts/import_weights.py``)."""

    fmt: str
    """``released.RELEASED_FORMATS``: gsva-bin or lisa-hf."""
    weights: Path
    vision_tower: Path
    out: Path
    llava: Path | None = None
    """Required for gsva-bin; lisa-hf defaults to the LISA directory itself."""
    config: Path | None = None
    lora_alpha: int = 16
    precision: str = "fp32"


def import_released(request: ImportRequest, log: Callable[[str], None] = print) -> Path:
    """Import the released weights of ``request`` into the model directory ``request.out``; the
    key-mapping report goes to ``log``. ``ReleasedWeightsError`` (nothing written) when a key is
    unplaced, missing or mis-shaped, or the tokenizer's task-token ids differ from the file's rows."""
    llava_dir = request.llava or (request.weights if request.fmt == "lisa-hf" else None)
    if llava_dir is None:
        raise released.ReleasedWeightsError("the gsva-bin format needs the LLaVA directory it was trained from (--llava)")
    llava_config = json.loads((llava_dir / "config.json").read_text())
    for key in LISA_ONLY_FIELDS:
        llava_config.pop(key, None)
    source = released.read_released_state(request.weights, request.fmt)
    rows = released.embedding_rows(source, request.fmt)
    out = request.out.resolve()
    cfg = load_config(request.config, [f"model.sam_checkpoint={out / 'sam.pth'}"])
    model_cfg = released_model_config(cfg.model, source, request)
    image_markers = resolve_image_markers(model_cfg.use_im_start_end, llava_config)
    tokens = task_token_strings("shared", 0, model_cfg.use_rej_token, image_markers)
    token_ids = check_token_rows(llava_dir, tokens, rows, cfg.data.model_max_length)
    llava_config["vocab_size"] = rows
    skeleton = released.model_skeleton(llava_config, request.vision_tower, model_cfg, cfg.data.sam_image_size)
    report = released.map_released_state(source, request.fmt, released.expected_shapes(skeleton))
    log(f"{request.weights} ({request.fmt}): sam_type {model_cfg.sam_type}, lora_r {model_cfg.lora_r} on "
        f"{model_cfg.lora_target_modules}, {rows} token rows, task tokens {token_ids}")
    log(report.summary())
    if not report.ok:
        raise released.ReleasedWeightsError("import refused: fix the keys above (nothing written)")
    paths = released.write_imported(released.mapped_state(source, report), skeleton, llava_config, request.vision_tower, out)
    for name in TOKENIZER_FILES:
        if (llava_dir / name).is_file():
            shutil.copy2(llava_dir / name, paths["llava"] / name)
    model_cfg = dataclasses.replace(
        model_cfg, llava_path=str(paths["llava"]), tokenizer_path=None, vision_tower_path=str(paths["clip"]),
        sam_checkpoint=str(paths["sam"]),
    )
    write_config(dataclasses.replace(cfg, model=model_cfg), out / CONFIG_NAME)
    return out


def released_model_config(base: ModelConfig, source: dict, request: ImportRequest) -> ModelConfig:
    """``base`` with what the released file decides: SAM type, LoRA rank and targets, task tokens."""
    lora_r, targets = released.infer_lora(source, request.fmt)
    return dataclasses.replace(
        base,
        sam_type=released.infer_sam_type(source, request.fmt),
        finetune="lora" if lora_r else "frozen",  # merged weights (lisa-hf) carry no adapters
        lora_r=lora_r or base.lora_r,
        lora_alpha=request.lora_alpha,
        lora_target_modules=targets or list(base.lora_target_modules),
        use_rej_token=request.fmt == "gsva-bin",
        seg_token_mode="shared",
        init_weights=None,
        precision=request.precision,
        gradient_checkpointing=False,
        mm_projector_init="pretrained",  # llava/ holds the released projector: it must not be redrawn
    )
