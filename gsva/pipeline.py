"""Everything a model is used with, built in one place: the tokenizer with the task tokens, the
GSVA model and the sample builder that turns images and expressions into its batches. Training,
``eval.py``, inference, the demo page and feature precomputation all start here.

    pipeline = build_pipeline(cfg)                           # from a config (weights as it names them)
    pipeline = from_pretrained("runs/x/final")               # a model directory (training's final/)
    pipeline = from_pretrained(path, ["model.precision=bf16"], device="cuda")
    batch = Collator(...)(...); pipeline.model.predict_teacher_forced(batch)

A model directory (``gsva.model.directory``) holds ``model.safetensors`` (the trainable weights)
and ``config.yaml``: the frozen parts (LLM base weights, CLIP, SAM's encoders) are rebuilt from the
paths in ``config.yaml`` (or, for random tiny parts, from ``run.seed``), so the directory is only
complete together with the checkpoints the config names. A load fills EVERY trainable parameter or
fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from gsva.config import Config, load_config
from gsva.data.sample_builder import SampleBuilder, SampleSettings
from gsva.model.build import backbone_image_marker, build_gsva, uses_image_markers
from gsva.model.gsva import GsvaModel
from gsva.model.directory import config_file_of, load_trainable_weights, resolve_weights_file
from gsva.text.vocabulary import build_vocabulary


@dataclass
class Pipeline:
    cfg: Config
    tokenizer: PreTrainedTokenizerBase
    model: GsvaModel
    builder: SampleBuilder


def build_pipeline(cfg: Config) -> Pipeline:
    """Tokenizer, model (weights as ``cfg.model`` names them, random where it names none) and
    sample builder of ``cfg``."""
    vocabulary = build_vocabulary(cfg, uses_image_markers(cfg), backbone_image_marker(cfg))
    model = build_gsva(cfg, vocabulary)
    builder = SampleBuilder(vocabulary.tokenizer, vocabulary.prompts, SampleSettings.from_config(cfg.data))
    return Pipeline(cfg=cfg, tokenizer=vocabulary.tokenizer, model=model, builder=builder)


def from_pretrained(
    weights: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | torch.device = "cpu",
    config_file: str | Path | None = None,
) -> Pipeline:
    """Rebuild the model of the ``config.yaml`` beside ``weights`` (a model directory or its
    weights file; or of ``config_file``; dotted ``overrides`` applied, e.g. ``model.precision=bf16``)
    and strictly load the weights; the model is in eval mode on ``device``."""
    weights_file = resolve_weights_file(weights)
    config_file = Path(config_file) if config_file is not None else config_file_of(weights_file)
    pipeline = build_pipeline(load_config(config_file, list(overrides)))
    load_trainable_weights(pipeline.model, weights_file)
    pipeline.model.to(torch.device(device)).eval()
    return pipeline
