"""Qwen2.5-VL as the multimodal LLM of GSVA.

``Qwen25VLBackbone`` adapts transformers' ``Qwen2_5_VLForConditionalGeneration`` to the interface
``GsvaModel`` uses of its MLLM (the one ``LlavaModel`` has), re-using its parts without copying:

- images are square, of a side S that is a multiple of ``patch_size * spatial_merge_size`` (28),
  one temporal frame: grid_thw = (1, S/14, S/14) and P = (S/28)^2 image tokens after the 2x2
  merger. The adapter turns GSVA's (B, 3, S, S) uint8 images into Qwen's flattened patches itself,
  as ``Qwen2VLImageProcessor`` does when it does not resize;
- the frozen part is the whole ``visual`` module, merger included (the merger is Qwen's
  projector): ``vision_features`` returns (B, P, D) features in the LLM's embedding space, and
  ``mm_projector`` is the identity;
- the decoder uses M-RoPE: temporal/height/width positions that depend on where the image patches
  are (``mrope_position_ids``), so ``last_hidden_states`` and ``generate_from_embeds`` take the
  spliced token ids beside the embeddings;
- parameters live under ``visual.*`` and ``language_model.*`` (decoder ``model.*`` and
  ``lm_head``), so a policy that trains ``language_model.*`` never reaches the vision tower.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLPreTrainedModel,
    Qwen2_5_VLTextModel,
)

from gsva.config import TinyDims
from gsva.model.generation import GreedyGeneration
from gsva.model.hf_loading import load_checked
from gsva.model.mllm import scale_tiny_init
from gsva.model.pixels import normalize_clip_images
from gsva.model.spliced_decoder import SplicedDecoder
from gsva.text.special_tokens import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX

QWEN2_5_VL_MODEL_TYPE = "qwen2_5_vl"
IMAGE_PAD_TOKEN = "<|image_pad|>"
"""The token that Qwen's chat template writes for an image (repeated P times by Qwen's processor)."""
IMAGE_MARKER = f"<|vision_start|>{IMAGE_PLACEHOLDER}<|vision_end|>"
"""The image in a prompt's text: Qwen wraps its image positions in ``<|vision_start|>``/
``<|vision_end|>``; the placeholder between them becomes the P spliced features."""


def patchify_images(pixels: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> torch.Tensor:
    """(B, 3, S, S) normalised images -> (B * (S/patch_size)^2, 3 * temporal_patch_size * patch_size^2)
    patches in ``Qwen2VLImageProcessor.patchify``'s order: per image, the merge windows in raster
    order, the merge_size^2 patches of a window in raster order; each patch flattened as (channel,
    frame, row, column), its one frame repeated ``temporal_patch_size`` times."""
    batch, channels, height, width = pixels.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    windows = pixels.reshape(
        batch, channels, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
    ).permute(0, 2, 5, 3, 6, 1, 4, 7)
    frames = windows.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal_patch_size, -1, -1)
    return frames.reshape(batch * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)


def image_grid_thw(batch: int, side_patches: int, device: torch.device) -> torch.Tensor:
    """(B, 3) long grid (frames, rows, columns) of B square one-frame images of ``side_patches``
    patches a side."""
    return torch.tensor([1, side_patches, side_patches], device=device).repeat(batch, 1)


def mrope_position_ids(token_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(N, L) spliced ids (``IMAGE_TOKEN_INDEX`` on the P = g*g patches of a row's one square image)
    and (N, L) mask of the tokens that count (None: all of them) -> (3, N, L) long temporal, height
    and width positions, those of Qwen2.5-VL's ``get_rope_index``: text tokens count up by one in
    all three; the patches of an image that starts at position k sit at (k, k + row, k + column);
    the text after it resumes at k + g. Masked tokens get 0. Computed on the device."""
    valid = torch.ones_like(token_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    rank = valid.long().cumsum(1) - 1
    is_patch = (token_ids == IMAGE_TOKEN_INDEX) & valid
    patches = is_patch.long().sum(1, keepdim=True)
    side = patches.double().sqrt().round().long().clamp(min=1)
    start = torch.where(is_patch, rank, token_ids.shape[1]).amin(1, keepdim=True)
    offset = rank - start
    text = torch.where(offset < 0, rank, rank - patches + side)
    temporal = torch.where(is_patch, start, text)
    height = torch.where(is_patch, start + offset.div(side, rounding_mode="floor"), text)
    width = torch.where(is_patch, start + offset.remainder(side), text)
    return torch.stack([temporal, height, width]).masked_fill(~valid, 0)


class Qwen25VLTextForCausalLM(Qwen2_5_VLPreTrainedModel):
    """Qwen2.5-VL's decoder (``model``) and ``lm_head`` without the vision tower: the part GSVA
    resizes, adapts with LoRA and trains. ``Qwen25VLBackbone`` calls ``model`` with M-RoPE
    positions and ``lm_head`` on the states it needs, so this class has no forward of its own."""

    config: Qwen2_5_VLTextConfig
    base_model_prefix = "model"
    _no_split_modules = ["Qwen2_5_VLDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: Qwen2_5_VLTextConfig) -> None:
        super().__init__(config)
        self.model = Qwen2_5_VLTextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_parts(cls, config: Qwen2_5_VLTextConfig, decoder: Qwen2_5_VLTextModel, lm_head: nn.Linear) -> Qwen25VLTextForCausalLM:
        """Wrap existing parts (no copy); ``config.tie_word_embeddings`` says whether ``lm_head``
        shares the token embeddings, which resizing keeps."""
        with torch.device("meta"):
            language_model = cls(config)
        language_model.model = decoder
        language_model.lm_head = lm_head
        return language_model


class Qwen25VLBackbone(SplicedDecoder):
    """Qwen2.5-VL behind GSVA's MLLM interface: ``vision_features`` -> ``mm_projector`` (identity)
    -> ``splice`` -> ``last_hidden_states`` (with the spliced token ids) -> ``lm_logits``, and
    ``generate_from_embeds`` for free greedy decoding."""

    def __init__(
        self, config: Qwen2_5_VLConfig, visual: Qwen2_5_VisionTransformerPretrainedModel, language_model: Qwen25VLTextForCausalLM
    ) -> None:
        super().__init__()
        self.config = config
        """The whole model's config; its ``text_config`` is ``language_model.config`` (one object,
        so resizing the vocabulary updates both)."""
        self.visual = visual
        self.language_model = language_model
        self.mm_projector = nn.Identity()

    @classmethod
    def from_hf(cls, model: Qwen2_5_VLForConditionalGeneration) -> Qwen25VLBackbone:
        """The backbone made of ``model``'s parts (shared, not copied)."""
        config = model.config
        config.text_config.tie_word_embeddings = config.tie_word_embeddings
        language_model = Qwen25VLTextForCausalLM.from_parts(config.text_config, model.model.language_model, model.lm_head)
        return cls(config, model.model.visual, language_model)

    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    @property
    def patch_multiple(self) -> int:
        """Image sides must be multiples of this: patch size times merge size (28)."""
        return self.visual.patch_size * self.visual.spatial_merge_size

    # ----------------------------------------------------------------- images
    @property
    def vision_encoder(self) -> nn.Module:
        """The frozen vision part whose output a feature cache holds (ViT and merger)."""
        return self.visual

    def feature_settings(self) -> dict[str, Any]:
        """What, beside the encoder's weights and input size, decides the cached features: nothing."""
        return {}

    def vision_feature_shape(self, image_size: int) -> tuple[int, int]:
        """(P, D) of ``vision_features`` for (B, 3, image_size, image_size) images."""
        return ((image_size // self.patch_multiple) ** 2, self.visual.config.out_hidden_size)

    def vision_features(self, clip_images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 RGB -> (B, P, D) post-merger features of the frozen ``visual`` module,
        P = (S/28)^2 in raster order of the merged grid: what a feature cache stores."""
        side = clip_images.shape[-1]
        if clip_images.shape[-2] != side or side % self.patch_multiple:
            raise ValueError(
                f"Qwen2.5-VL images must be square with a side that is a multiple of {self.patch_multiple}; "
                f"got {tuple(clip_images.shape[-2:])}"
            )
        config = self.visual.config
        pixels = normalize_clip_images(clip_images).to(self.visual.dtype)
        patches = patchify_images(pixels, config.patch_size, config.spatial_merge_size, config.temporal_patch_size)
        grid = image_grid_thw(clip_images.shape[0], side // config.patch_size, clip_images.device)
        merged = self.visual(patches, grid_thw=grid).pooler_output
        return merged.reshape(clip_images.shape[0], -1, merged.shape[-1]).contiguous()

    # ----------------------------------------------------------------- text
    def last_hidden_states(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, token_ids: torch.Tensor
    ) -> torch.Tensor:
        """(N, L', D) post-norm output of the decoder's last layer. ``attention_mask`` (N, L') or
        None for causal attention only (right padding); ``token_ids`` (N, L'): the spliced ids
        (``SplicedInputs.token_ids``) that place the M-RoPE positions."""
        mask = attention_mask.long() if attention_mask is not None else None
        return self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=mrope_position_ids(token_ids, attention_mask),
            use_cache=False,
        ).last_hidden_state

    @torch.no_grad()
    def generate_from_embeds(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        token_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> GreedyGeneration:
        """Greedy decoding with a KV cache from spliced prompts: ``inputs_embeds`` (N, L', D),
        ``attention_mask`` (N, L') marking each row's prompt tokens (any padding layout: tokens
        after a row's prompt, e.g. its answer, are masked out), ``token_ids`` (N, L') the spliced
        ids. Each row's first new token follows its last prompt token; new tokens take the text
        positions after the prompt's largest M-RoPE position, as Qwen's own generation does.
        Stops when every row has produced ``eos_token_id`` or after ``max_new_tokens``."""
        decoder = self.language_model.model
        rows = torch.arange(inputs_embeds.shape[0], device=inputs_embeds.device)
        positions = mrope_position_ids(token_ids, attention_mask)
        next_position = positions.amax(dim=(0, 2)) + 1
        last_prompt_token = (attention_mask.long() * torch.arange(attention_mask.shape[1], device=rows.device)).argmax(1)
        mask = attention_mask.long()
        cache = DynamicCache(config=decoder.config)
        hidden = decoder(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        state = hidden.last_hidden_state[rows, last_prompt_token]
        finished = torch.zeros_like(rows, dtype=torch.bool)
        tokens, states = [], []
        for step in range(max_new_tokens):
            token = torch.where(finished, pad_token_id, self.lm_logits(state).argmax(-1))
            tokens.append(token)
            states.append(state)
            finished = finished | (token == eos_token_id)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            step_positions = (next_position + step).view(1, -1, 1).expand(3, -1, 1)
            hidden = decoder(
                inputs_embeds=self.embed_tokens(token.unsqueeze(1)),
                attention_mask=mask,
                position_ids=step_positions,
                cache=cache,
                use_cache=True,
            )
            state = hidden.last_hidden_state[:, -1]
        return GreedyGeneration(tokens=torch.stack(tokens, dim=1), states=torch.stack(states, dim=1))

    # ----------------------------------------------------------------- training and files
    @staticmethod
    def lora_target_modules(names: Sequence[str]) -> str:
        """A peft ``target_modules`` regex for the modules ``names`` (e.g. q_proj, v_proj) of the
        decoder layers only, whichever module LoRA is injected into (this backbone, its
        ``language_model`` or a whole ``Qwen2_5_VLForConditionalGeneration``). Bare names would
        also match the vision blocks' ``mlp.gate_proj``/``up_proj``/``down_proj``."""
        alternatives = "|".join(re.escape(name) for name in names)
        return rf"(?:.*\.)?layers\.\d+\.(?:self_attn|mlp)\.(?:{alternatives})"

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the backbone as a ``Qwen2_5_VLForConditionalGeneration`` directory (config.json and
        safetensors weights), read back by ``load_qwen2_5_vl`` or by transformers. LoRA adapters
        must have been merged first (their wrapped layers have no place in that layout)."""
        adapted = sorted({name.split(".lora_")[0] for name, _ in self.named_parameters() if ".lora_" in name})
        if adapted:
            raise ValueError(f"merge the LoRA adapters before saving in the Qwen2.5-VL layout; adapted: {adapted[:5]}")
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(self.config)
        model.model.visual = self.visual
        model.model.language_model = self.language_model.model
        model.lm_head = self.language_model.lm_head
        model.save_pretrained(str(directory))


def load_qwen2_5_vl(path: str | Path, dtype: torch.dtype) -> Qwen25VLBackbone:
    """Load a ``Qwen2_5_VLForConditionalGeneration`` directory (``save_pretrained`` layout) as a
    backbone; every weight must be in the files. A directory of another model type is refused."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"Qwen2.5-VL checkpoint: {config_file} not found")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != QWEN2_5_VL_MODEL_TYPE:
        raise ValueError(
            f"{path}: config.json has model_type {model_type!r}, expected {QWEN2_5_VL_MODEL_TYPE!r} "
            "(a Qwen2_5_VLForConditionalGeneration checkpoint)"
        )
    return Qwen25VLBackbone.from_hf(load_checked(Qwen2_5_VLForConditionalGeneration, path, dtype))



QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", IMAGE_PAD_TOKEN, "<|video_pad|>",
)
"""Qwen2.5-VL's special tokens (a tiny tokenizer gets them as atomic entries)."""
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's ChatML chat template for text content, the chat template of a tiny Qwen tokenizer."""


def make_chat_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> PreTrainedTokenizerBase:
    """Give a tiny tokenizer (trained with ``QWEN_SPECIAL_TOKENS`` as extra tokens) Qwen's
    conventions: no BOS, eos ``<|im_end|>``, pad ``<|endoftext|>``, the ChatML template; saved to
    ``directory``."""
    tokenizer.bos_token = None
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.chat_template = "<|im_end|>", "<|endoftext|>", CHATML_TEMPLATE
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_tiny_qwen2_5_vl(dims: TinyDims, tokenizer: PreTrainedTokenizerBase, image_size: int) -> Qwen25VLBackbone:
    """A randomly initialised Qwen2.5-VL of the tiny dims: vision tower of ``clip_*`` sizes on
    ``clip_patch_size`` patches merged 2x2 (one attention window over the ``image_size`` image),
    Qwen2.5 decoder of ``llm_*`` sizes re-initialised at unit scale (``scale_tiny_init``);
    ``tokenizer`` holds ``QWEN_SPECIAL_TOKENS``."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    half_head = dims.llm_hidden_size // dims.llm_heads // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=dims.llm_hidden_size, intermediate_size=dims.llm_intermediate_size,
            num_hidden_layers=dims.llm_layers, num_attention_heads=dims.llm_heads, num_key_value_heads=dims.llm_heads,
            max_position_embeddings=dims.llm_max_position_embeddings, rms_norm_eps=1e-6, bos_token_id=None,
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [half_head // 4, half_head * 3 // 8, half_head * 3 // 8],
                             "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=dims.clip_layers, hidden_size=dims.clip_hidden_size, intermediate_size=4 * dims.clip_hidden_size,
            num_heads=dims.clip_heads, patch_size=dims.clip_patch_size, out_hidden_size=dims.llm_hidden_size,
            window_size=image_size, fullatt_block_indexes=list(range(dims.clip_layers)),
        ),
        image_token_id=ids[IMAGE_PAD_TOKEN], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    backbone = Qwen25VLBackbone.from_hf(Qwen2_5_VLForConditionalGeneration(config))
    scale_tiny_init(backbone.language_model)
    return backbone
