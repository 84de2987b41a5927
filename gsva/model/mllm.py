"""The multimodal LLM (LLaVA) composed from transformers parts.

A decoder-only causal LM, a ``CLIPVisionModel`` whose layer ``select_layer`` patch features go
through a projector (``linear`` or ``mlp2x_gelu``) and are spliced into ``inputs_embeds`` at the
image placeholder of each conversation.

Checkpoints in the original LLaVA layout are read: ``config.json`` with the decoder fields plus
``mm_vision_tower``, ``mm_hidden_size``, ``mm_projector_type``, ``mm_vision_select_layer``,
``mm_use_im_start_end``; weights ``model.safetensors`` / ``pytorch_model.bin`` (sharded with an
index or not) with keys ``model.layers.*``, ``lm_head.*`` and ``model.mm_projector.*``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from gsva.atomic import write_json_atomic, write_safetensors_atomic
from gsva.config import TinyDims
from gsva.model.hf_loading import load_checked
from gsva.model.pixels import normalize_clip_images
from gsva.model.spliced_decoder import SplicedDecoder
from gsva.tensor_files import load_tensor_file

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
LLAVA_KEYS = (
    "mm_vision_tower",
    "mm_hidden_size",
    "mm_projector_type",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
)


def build_projector(projector_type: str, vision_size: int, text_size: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(vision_size, text_size)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_size, text_size), nn.GELU(), nn.Linear(text_size, text_size))
    raise ValueError(f"unknown mm_projector_type {projector_type!r}; expected one of {PROJECTOR_TYPES}")


class VisionTowerOutputError(RuntimeError):
    """The vision tower returned another number of hidden states than its layers + 1."""


def check_hidden_state_count(hidden_states: tuple[torch.Tensor, ...], num_layers: int) -> None:
    """Raise unless ``hidden_states`` holds the embeddings plus one state per layer.

    LLaVA reads a layer counted from the end (``select_layer`` = -2: the second to last), so any
    other count silently selects another layer. It happens when a tower's output-capturing hooks
    are installed twice (transformers >= 5, a CLIP tower nested inside another model that installs
    them again on its first call): every layer is then returned twice from the second forward on,
    and -2 becomes the LAST layer.
    """
    if len(hidden_states) != num_layers + 1:
        raise VisionTowerOutputError(
            f"the vision tower returned {len(hidden_states)} hidden states for {num_layers} layers (expected "
            f"{num_layers + 1}: embeddings + one per layer), so a layer counted from the end would be the wrong "
            "one; its output-capturing hooks are probably installed twice (a CLIP tower nested inside another "
            "transformers model); call the tower on its own, not as a submodule of another PreTrainedModel"
        )


class LlavaModel(SplicedDecoder):
    def __init__(
        self,
        language_model: PreTrainedModel,
        vision_tower: CLIPVisionModel,
        mm_projector: nn.Module,
        select_layer: int = -2,
        use_im_start_end: bool = False,
        projector_type: str = "linear",
    ) -> None:
        super().__init__()
        self.language_model = language_model
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.select_layer = select_layer
        self.use_im_start_end = use_im_start_end
        self.projector_type = projector_type

    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    def encode_images(self, clip_images: torch.Tensor) -> torch.Tensor:
        """(B, 3, C, C) uint8 -> (B, P, D) projected patch features of layer ``select_layer`` (no CLS)."""
        return self.mm_projector(self.vision_features(clip_images))

    def vision_features(self, clip_images: torch.Tensor) -> torch.Tensor:
        """(B, 3, C, C) uint8 -> (B, P, D_v) patch features of the frozen tower's layer
        ``select_layer`` (no CLS), before the projector: what a feature cache stores. Contiguous,
        like the features read from a cache: the projector's bf16 matmul rounds differently on a
        strided input."""
        pixels = normalize_clip_images(clip_images).to(self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values=pixels, output_hidden_states=True)
        check_hidden_state_count(outputs.hidden_states, self.vision_tower.config.num_hidden_layers)
        return outputs.hidden_states[self.select_layer][:, 1:].contiguous()

    @property
    def vision_encoder(self) -> nn.Module:
        """The frozen vision part whose output a feature cache holds (the CLIP tower)."""
        return self.vision_tower

    def feature_settings(self) -> dict[str, Any]:
        """What, beside the encoder's weights and input size, decides the cached features."""
        return {"clip_select_layer": self.select_layer}

    def vision_feature_shape(self, image_size: int) -> tuple[int, int]:
        """(P, D_v) of ``vision_features`` for (B, 3, image_size, image_size) images."""
        config = self.vision_tower.config
        return ((image_size // config.patch_size) ** 2, config.hidden_size)

    def reinitialise_projector(self) -> None:
        """Replace the projector's weights by those of a freshly built projector of the same type:
        PyTorch's default ``nn.Linear`` initialisation (weight and bias uniform in ±1/sqrt(fan_in)),
        drawn in fp32 and then cast to the projector's dtype, as the authors' released code builds
        it after loading LLaVA."""
        fresh = build_projector(self.projector_type, self.vision_tower.config.hidden_size, self.hidden_size)
        self.mm_projector.load_state_dict(fresh.state_dict())

    def llava_config(self) -> dict[str, Any]:
        """The ``mm_*`` fields of the original LLaVA ``config.json``."""
        return {
            "mm_hidden_size": self.vision_tower.config.hidden_size,
            "mm_projector_type": self.projector_type,
            "mm_vision_select_layer": self.select_layer,
            "mm_vision_select_feature": "patch",
            "mm_use_im_start_end": self.use_im_start_end,
            "mm_use_im_patch_token": False,
        }


def scale_tiny_init(language_model: nn.Module) -> None:
    """Re-initialise a tiny decoder at unit scale: N(0, 1/fan_in) linears and N(0, 1) embeddings.

    LLaMA's N(0, 0.02) suits 4096-wide layers; at width 128 it leaves attention so flat that the
    decoder does not learn to look up image content within a CPU budget (measured: yes/no about a
    colour stays at chance for 600 steps, while this scale learns it in about 200).
    """
    with torch.no_grad():
        for module in language_model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0)


def build_tiny_llava(dims: TinyDims, vocab_size: int, clip_image_size: int, use_im_start_end: bool) -> LlavaModel:
    """A randomly initialised LLaVA (LLaMA decoder + CLIP vision tower + linear projector).

    The image is wrapped in ``<im_start>``/``<im_end>`` when ``use_im_start_end`` or
    ``dims.use_im_start_end`` is set.
    """
    language_model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=dims.llm_hidden_size,
            intermediate_size=dims.llm_intermediate_size,
            num_hidden_layers=dims.llm_layers,
            num_attention_heads=dims.llm_heads,
            num_key_value_heads=dims.llm_heads,
            max_position_embeddings=dims.llm_max_position_embeddings,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    scale_tiny_init(language_model)
    vision_tower = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=dims.clip_hidden_size,
            intermediate_size=dims.clip_hidden_size * 4,
            num_hidden_layers=dims.clip_layers,
            num_attention_heads=dims.clip_heads,
            image_size=clip_image_size,
            patch_size=dims.clip_patch_size,
            hidden_act="quick_gelu",
        )
    )
    projector = build_projector("linear", dims.clip_hidden_size, dims.llm_hidden_size)
    return LlavaModel(language_model, vision_tower, projector, use_im_start_end=use_im_start_end or dims.use_im_start_end)


def save_llava_checkpoint(llava: LlavaModel, output_dir: str | Path, vision_tower_dir: str | Path) -> None:
    """Write ``llava`` in the original LLaVA layout (config.json + model.safetensors), and its CLIP
    tower as an HF directory at ``vision_tower_dir`` (referenced by ``mm_vision_tower``)."""
    output_dir, vision_tower_dir = Path(output_dir), Path(vision_tower_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    llava.vision_tower.save_pretrained(str(vision_tower_dir))
    state = dict(llava.language_model.state_dict())
    state.update({f"model.mm_projector.{name}": tensor for name, tensor in llava.mm_projector.state_dict().items()})
    write_safetensors_atomic(output_dir / "model.safetensors", state)
    config = llava.language_model.config.to_dict()
    config.update(llava.llava_config())
    config.update(
        {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "mm_vision_tower": str(vision_tower_dir)}
    )
    write_json_atomic(output_dir / "config.json", config)


def _read_projector_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``model.mm_projector.*`` tensors of a LLaVA checkpoint directory (any weight layout)."""
    prefix = "model.mm_projector."
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = path / index_name
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text())["weight_map"]
            files = sorted({path / file for key, file in weight_map.items() if key.startswith(prefix)})
            break
    else:
        files = [file for file in (path / "model.safetensors", path / "pytorch_model.bin") if file.is_file()]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                state.update({key[len(prefix):]: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)})
        else:
            loaded = load_tensor_file(file)
            state.update({key[len(prefix):]: value for key, value in loaded.items() if key.startswith(prefix)})
    return state


def load_llava(path: str | Path, vision_tower_path: str | Path | None, dtype: torch.dtype) -> LlavaModel:
    """Load a LLaVA checkpoint in the original layout; every expected weight must be present."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"LLaVA checkpoint: {config_file} not found")
    raw = json.loads(config_file.read_text())
    missing_fields = [key for key in ("mm_vision_tower", "mm_hidden_size") if key not in raw]
    if missing_fields:
        raise ValueError(f"{config_file}: not a LLaVA config, missing {missing_fields}")
    tower = Path(vision_tower_path or raw["mm_vision_tower"])
    if not (tower / "config.json").is_file():
        raise FileNotFoundError(
            f"vision tower {tower} is not a local CLIP directory; download it (e.g. "
            "openai/clip-vit-large-patch14) and set model.vision_tower_path"
        )
    decoder_fields = {key: value for key, value in raw.items() if key not in LLAVA_KEYS + ("model_type", "architectures")}
    language_model = load_checked(
        LlamaForCausalLM, path, dtype, read_elsewhere=("model.mm_projector.", "model.vision_tower."), config=LlamaConfig(**decoder_fields)
    )
    vision_tower = load_checked(CLIPVisionModel, tower, dtype, read_elsewhere=("text_model.", "logit_scale", "text_projection.", "visual_projection."))
    projector_type = raw.get("mm_projector_type", "linear")
    projector = build_projector(projector_type, raw["mm_hidden_size"], language_model.config.hidden_size)
    projector_state = _read_projector_state(path)
    missing, unexpected = projector.load_state_dict(projector_state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: mm_projector weights do not fit {projector_type}: missing {missing}, unexpected {unexpected}")
    return LlavaModel(
        language_model,
        vision_tower,
        projector.to(dtype),
        select_layer=raw.get("mm_vision_select_layer", -2),
        use_im_start_end=raw.get("mm_use_im_start_end", False),
        projector_type=projector_type,
    )
