"""The authors' released weights (GSVA ``.bin``, LISA merged HF directory) mapped onto our model.

Two source layouts:

- ``gsva-bin``: ONE ``torch.save``d state dict of the whole PEFT-wrapped model (``gsva-7b-pt.bin``,
  ``gsva-7b-ft-gres.bin``, 13B), written by DeepSpeed's ``zero_to_fp32.py``. Every key starts with
  ``base_model.model.``; LoRA as ``lora_A.default`` / ``lora_B.default``; the wrapped base weights
  are ``q_proj.weight`` (peft 0.4, their files) or ``q_proj.base_layer.weight`` (peft >= 0.7);
  CLIP under ``vision_tower.vision_tower.vision_model.*`` (transformers 4.x) or without the
  ``vision_model.`` level (transformers 5).
- ``lisa-hf``: LISA's merged HF directory (``config.json`` + ``pytorch_model-*.bin`` shards and
  ``pytorch_model.bin.index.json``, or safetensors): the same names without ``base_model.model.``
  and without LoRA (merged), a single ``[SEG]`` and no ``[REJ]``.

``map_released_state`` translates the names and checks them against the names and shapes our
model expects; the report lists what went where, what was not placed, what is missing and what
has the wrong shape. ``mapped_state`` refuses any of these: never a silent partial load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from gsva.atomic import write_json_atomic, write_safetensors_atomic, write_torch_atomic
from gsva.config import ModelConfig
from gsva.model.gsva import GsvaModel
from gsva.text.vocabulary import SlotTokenIds
from gsva.model.mllm import LLAVA_KEYS, LlavaModel, build_projector
from gsva.model.sam import build_sam
from gsva.model.trainable import add_lora, apply_trainable_policy
from gsva.model.directory import WEIGHTS_NAME
from gsva.tensor_files import load_tensor_file

RELEASED_FORMATS = ("gsva-bin", "lisa-hf")
PEFT_PREFIX = "base_model.model."

# Source names (PEFT prefix removed) -> our GsvaModel names; first matching prefix wins.
RENAMES = (
    ("lm_head.", "mllm.language_model.lm_head."),
    ("model.vision_tower.vision_tower.vision_model.", "mllm.vision_tower."),
    ("model.vision_tower.vision_tower.", "mllm.vision_tower."),
    ("model.mm_projector.", "mllm.mm_projector."),
    ("model.visual_model.", "visual_model."),
    ("model.text_hidden_fcs.0.", "query_projector."),
    ("model.", "mllm.language_model.model."),
)

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers older transformers saved that today's models recompute (reported, never loaded)."""

SAM_TYPES_BY_WIDTH = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}
SAM_WIDTH_KEY = "visual_model.image_encoder.patch_embed.proj.weight"


class ReleasedWeightsError(ValueError):
    """The released weights do not fit the model: keys missing, unplaced or of the wrong shape."""


@dataclass
class MappingReport:
    """How the keys of a released state dict land on our model's state dict."""

    mapped: dict[str, str] = field(default_factory=dict)
    """source key -> our key (shape checked)."""
    unplaced: list[str] = field(default_factory=list)
    """Source keys with no place in our model."""
    missing: list[str] = field(default_factory=list)
    """Our keys that no source key fills."""
    shape_mismatches: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """(source key, our key, source shape, our shape)."""
    ignored: list[str] = field(default_factory=list)
    """Source buffers that are recomputed (``IGNORED_SUFFIXES``)."""

    @property
    def ok(self) -> bool:
        return not (self.unplaced or self.missing or self.shape_mismatches)

    def summary(self) -> str:
        """Counts, then every unplaced, missing and mismatched key (one per line)."""
        lines = [
            f"mapped {len(self.mapped)}, unplaced {len(self.unplaced)}, missing {len(self.missing)}, "
            f"shape mismatches {len(self.shape_mismatches)}, ignored {len(self.ignored)}"
        ]
        lines += [f"  unplaced source key: {key}" for key in self.unplaced]
        lines += [f"  missing expected key: {key}" for key in self.missing]
        lines += [
            f"  shape mismatch: {source} {list(got)} -> {ours} expects {list(want)}"
            for source, ours, got, want in self.shape_mismatches
        ]
        lines += [f"  ignored (recomputed) source key: {key}" for key in self.ignored]
        return "\n".join(lines)

    def raise_if_failed(self, source: str = "released weights") -> None:
        if not self.ok:
            raise ReleasedWeightsError(f"{source} do not fit the model:\n{self.summary()}")


def _check_format(fmt: str) -> None:
    if fmt not in RELEASED_FORMATS:
        raise ValueError(f"unknown released format {fmt!r}; expected one of {RELEASED_FORMATS}")


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    return load_tensor_file(file)


def read_released_state(path: str | Path, fmt: str) -> dict[str, torch.Tensor]:
    """The state dict of a released checkpoint: a ``.bin`` file (gsva-bin) or a merged HF
    directory read through its shard index (lisa-hf). Pickles are read with ``weights_only``."""
    _check_format(fmt)
    path = Path(path)
    if fmt == "gsva-bin":
        if not path.is_file():
            raise FileNotFoundError(f"GSVA weights file not found: {path}")
        return _load_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"LISA checkpoint directory not found: {path}")
    for index_name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        index_file = path / index_name
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text())["weight_map"]
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_load_file(path / shard))
            listed, read = set(weight_map), set(state)
            if listed != read:
                raise ReleasedWeightsError(
                    f"{index_file}: shards do not match the index: listed but absent {sorted(listed - read)[:10]}, "
                    f"present but unlisted {sorted(read - listed)[:10]}"
                )
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return _load_file(path / name)
    raise FileNotFoundError(f"{path}: no pytorch_model.bin(.index.json) or model.safetensors(.index.json)")


def released_name(key: str, fmt: str) -> str | None:
    """Our name for a released key (without the peft ``base_layer.`` level); None if it has no place."""
    _check_format(fmt)
    if fmt == "gsva-bin":
        if not key.startswith(PEFT_PREFIX):
            return None
        key = key[len(PEFT_PREFIX):]
    for prefix, replacement in RENAMES:
        if key.startswith(prefix):
            return replacement + key[len(prefix):]
    return None


def _with_base_layer(name: str) -> str:
    """``...q_proj.weight`` -> ``...q_proj.base_layer.weight`` (peft >= 0.7 naming of a wrapped layer)."""
    module, _, leaf = name.rpartition(".")
    return f"{module}.base_layer.{leaf}"


def map_released_state(
    source: Mapping[str, torch.Tensor], fmt: str, expected: Mapping[str, tuple[int, ...]]
) -> MappingReport:
    """Map ``source`` keys onto ``expected`` (our state-dict names -> shapes) and report."""
    report = MappingReport()
    filled: set[str] = set()
    for key in sorted(source):
        if key.endswith(IGNORED_SUFFIXES):
            report.ignored.append(key)
            continue
        ours = released_name(key, fmt)
        if ours is not None and ours not in expected and ".base_layer." not in ours:
            ours = _with_base_layer(ours) if _with_base_layer(ours) in expected else ours
        if ours is None or ours not in expected or ours in filled:
            report.unplaced.append(key)
            continue
        filled.add(ours)
        got, want = tuple(source[key].shape), tuple(expected[ours])
        if got != want:
            report.shape_mismatches.append((key, ours, got, want))
            continue
        report.mapped[key] = ours
    report.missing = sorted(set(expected) - filled)
    return report


def mapped_state(source: Mapping[str, torch.Tensor], report: MappingReport) -> dict[str, torch.Tensor]:
    """Our name -> tensor for every mapped key of a report that passed."""
    report.raise_if_failed()
    return {ours: source[key] for key, ours in report.mapped.items()}


def infer_sam_type(source: Mapping[str, torch.Tensor], fmt: str) -> str:
    """'vit_h' | 'vit_l' | 'vit_b' from the image-encoder width; 'tiny' for any other width."""
    for key, tensor in source.items():
        if released_name(key, fmt) == SAM_WIDTH_KEY:
            return SAM_TYPES_BY_WIDTH.get(tensor.shape[0], "tiny")
    raise ReleasedWeightsError(f"no SAM image encoder ({SAM_WIDTH_KEY}) in the released weights")


def infer_lora(source: Mapping[str, torch.Tensor], fmt: str) -> tuple[int, list[str]]:
    """(rank, target module names) of the LoRA adapters; (0, []) when there are none (merged)."""
    ranks, targets = set(), set()
    for key, tensor in source.items():
        name = released_name(key, fmt) or ""
        if ".lora_A." in name:
            ranks.add(tensor.shape[0])
            targets.add(name.split(".lora_A.")[0].rpartition(".")[2])
    if len(ranks) > 1:
        raise ReleasedWeightsError(f"LoRA adapters of different ranks {sorted(ranks)}")
    return (ranks.pop() if ranks else 0), sorted(targets)


def embedding_rows(source: Mapping[str, torch.Tensor], fmt: str) -> int:
    """Rows of the token embedding table (base vocabulary + the added task tokens)."""
    for key, tensor in source.items():
        if released_name(key, fmt) == "mllm.language_model.model.embed_tokens.weight":
            return tensor.shape[0]
    raise ReleasedWeightsError("no embed_tokens.weight in the released weights")


def authors_token_ids(base_vocab: Mapping[str, int], tokens: list[str]) -> dict[str, int]:
    """The ids the authors' code gave ``tokens``: appended in order after ``base_vocab``, a token
    already in it keeping its id (``tokenizer.add_tokens`` semantics)."""
    next_id = max(base_vocab.values()) + 1 if base_vocab else 0
    ids = {}
    for token in tokens:
        if token in base_vocab:
            ids[token] = base_vocab[token]
        else:
            ids[token] = next_id
            next_id += 1
    return ids


# ----------------------------------------------------------------- our model's expected names and shapes
def model_skeleton(
    llava_config: Mapping, clip_config_dir: str | Path, model_cfg: ModelConfig, sam_image_size: int
) -> GsvaModel:
    """Our GsvaModel on the meta device (no memory, no weights read), for names and shapes only."""
    decoder_fields = {key: value for key, value in llava_config.items() if key not in LLAVA_KEYS + ("model_type", "architectures")}
    with torch.device("meta"):
        language_model = LlamaForCausalLM(LlamaConfig(**decoder_fields))
        vision_tower = CLIPVisionModel(CLIPVisionConfig.from_pretrained(str(clip_config_dir)))
        projector_type = llava_config.get("mm_projector_type", "linear")
        projector = build_projector(projector_type, llava_config["mm_hidden_size"], language_model.config.hidden_size)
        llava = LlavaModel(
            language_model,
            vision_tower,
            projector,
            select_layer=llava_config.get("mm_vision_select_layer", -2),
            use_im_start_end=llava_config.get("mm_use_im_start_end", False),
            projector_type=projector_type,
        )
        sam = build_sam(model_cfg.sam_type, None, model_cfg.tiny, sam_image_size)
        model = GsvaModel(llava, sam, SlotTokenIds((0,), None, 2, 0), model_cfg, sam_image_size)
        add_lora(model.mllm.language_model, model_cfg)
    apply_trainable_policy(model, model_cfg)
    return model


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


# ----------------------------------------------------------------- writing the files our loaders read
LLM_PREFIX = "mllm.language_model."
CLIP_PREFIX = "mllm.vision_tower."
PROJECTOR_PREFIX = "mllm.mm_projector."
SAM_PREFIX = "visual_model."


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}


def write_imported(
    ours: Mapping[str, torch.Tensor],
    model: GsvaModel,
    llava_config: Mapping,
    clip_config_dir: str | Path,
    out: str | Path,
) -> dict[str, Path]:
    """Write the mapped weights (our names) as the files our loaders read, under ``out``:

    - ``llava/``: original LLaVA layout (config.json + model.safetensors: decoder base weights with
      LoRA NOT merged, embeddings, lm_head, ``model.mm_projector.*``); ``mm_vision_tower`` -> ``clip/``.
    - ``clip/``: ``CLIPVisionModel.save_pretrained`` (config from ``clip_config_dir``).
    - ``sam.pth``: the segment_anything state dict.
    - ``model.safetensors``: the trainable weights of ``model``'s policy (``requires_grad``).
    ``model`` is the skeleton (meta) the names were checked against. Returns the written paths.
    """
    out = Path(out).resolve()
    paths = {"llava": out / "llava", "clip": out / "clip", "sam": out / "sam.pth", "weights": out / WEIGHTS_NAME}
    paths["llava"].mkdir(parents=True, exist_ok=True)

    llm = {name.replace(".base_layer.", "."): tensor for name, tensor in _strip(ours, LLM_PREFIX).items() if ".lora_" not in name}
    llm.update({f"model.mm_projector.{name}": tensor for name, tensor in _strip(ours, PROJECTOR_PREFIX).items()})
    write_safetensors_atomic(paths["llava"] / WEIGHTS_NAME, llm)
    config = dict(llava_config)
    config.update(
        {
            "vocab_size": ours[f"{LLM_PREFIX}model.embed_tokens.weight"].shape[0],
            "mm_vision_tower": str(paths["clip"]),
            "architectures": ["LlavaLlamaForCausalLM"],
            "model_type": "llava",
        }
    )
    write_json_atomic(paths["llava"] / "config.json", config)

    vision_tower = CLIPVisionModel(CLIPVisionConfig.from_pretrained(str(clip_config_dir)))
    vision_tower.load_state_dict(_strip(ours, CLIP_PREFIX), strict=True)
    vision_tower.save_pretrained(str(paths["clip"]))

    write_torch_atomic(paths["sam"], {name: tensor.contiguous() for name, tensor in _strip(ours, SAM_PREFIX).items()})

    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    write_safetensors_atomic(paths["weights"], {name: ours[name] for name in trainable})
    return paths
