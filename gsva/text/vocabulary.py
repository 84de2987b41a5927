"""The tokenizer of a GSVA model with its task tokens, and the prompt settings that go with it.

    vocabulary = build_vocabulary(cfg, use_im_start_end=True)
    vocabulary.tokenizer            # [SEG] [REJ] <im_start> <im_end> added, in the released order
    vocabulary.slot_ids             # SlotTokenIds(seg_ids=(32000,), rej_id=32001, eos_id=2, pad_id=0)
    vocabulary.prompts              # template, image marker, slot tokens, question and answer forms
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from gsva.config import Config
from gsva.text.conversation import get_template
from gsva.text.prompts import PromptSettings
from gsva.text.special_tokens import REJ_TOKEN
from gsva.text.tokenizer import add_task_tokens, load_tokenizer, task_token_strings


@dataclass(frozen=True)
class SlotTokenIds:
    seg_ids: tuple[int, ...]
    """One shared ``[SEG]`` id, or the individual ``[SEGnnn]`` ids (slot i uses i mod N)."""
    rej_id: int | None
    eos_id: int
    pad_id: int


@dataclass(frozen=True)
class TaskVocabulary:
    tokenizer: PreTrainedTokenizerBase
    base_size: int
    """Entries of the tokenizer before the task tokens were added (rows of a base checkpoint)."""
    slot_ids: SlotTokenIds
    prompts: PromptSettings

    @property
    def size(self) -> int:
        return len(self.tokenizer)


def build_vocabulary(cfg: Config, use_im_start_end: bool, image_marker: str | None = None) -> TaskVocabulary:
    """The tokenizer of ``model.tokenizer_path`` (default ``model.llava_path``) with GSVA's task
    tokens (``<im_start>``/``<im_end>`` too when ``use_im_start_end``: see
    ``gsva.model.build.uses_image_markers`` for how ``model.use_im_start_end`` decides it), and the
    prompt settings of ``data.conversation`` (``chat_template``: the tokenizer's own chat template).
    ``image_marker`` is the backbone's own writing of the image around the placeholder (e.g. the
    ``IMAGE_MARKER`` of ``gsva.model.backbones.qwen2_5_vl``); None = LLaVA's, by ``use_im_start_end``."""
    model_cfg = cfg.model
    tokenizer_path = model_cfg.tokenizer_path or model_cfg.llava_path
    if tokenizer_path is None:
        raise ValueError("model.tokenizer_path (or model.llava_path) must name a tokenizer directory")
    tokenizer = load_tokenizer(tokenizer_path, cfg.data.model_max_length)
    base_size = len(tokenizer)
    tokens = task_token_strings(model_cfg.seg_token_mode, model_cfg.num_individual_seg_tokens, model_cfg.use_rej_token, use_im_start_end)
    ids = add_task_tokens(tokenizer, tokens)
    seg_tokens = [token for token in tokens if token.startswith("[SEG")]
    return TaskVocabulary(
        tokenizer=tokenizer,
        base_size=base_size,
        slot_ids=SlotTokenIds(
            seg_ids=tuple(ids[token] for token in seg_tokens),
            rej_id=ids.get(REJ_TOKEN),
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
        ),
        prompts=PromptSettings(
            template=get_template(cfg.data.conversation, tokenizer),
            seg_tokens=seg_tokens,
            use_im_start_end=use_im_start_end,
            use_rej_token=model_cfg.use_rej_token,
            backbone_image_marker=image_marker,
        ),
    )
