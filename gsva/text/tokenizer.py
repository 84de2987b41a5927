"""Tokenizers: the task tokens added to any HF tokenizer, and a tiny BPE built locally.

Real runs load the LLaVA checkpoint's own tokenizer directory. The tiny demo trains a byte-level
BPE on the prompt vocabulary with the ``tokenizers`` library (no download) and saves it in the
HF format, so that both go through ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from gsva.text.special_tokens import (
    IM_END_TOKEN,
    IM_START_TOKEN,
    REJ_TOKEN,
    SEG_TOKEN,
    individual_seg_tokens,
)


def task_token_strings(
    seg_token_mode: str, num_individual_seg_tokens: int, use_rej_token: bool, use_im_start_end: bool
) -> list[str]:
    """Tokens GSVA adds, in the order of the released checkpoints: [SEG], [REJ], <im_start>, <im_end>."""
    seg = [SEG_TOKEN] if seg_token_mode == "shared" else individual_seg_tokens(num_individual_seg_tokens)
    rej = [REJ_TOKEN] if use_rej_token else []
    image = [IM_START_TOKEN, IM_END_TOKEN] if use_im_start_end else []
    return seg + rej + image


def add_task_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> dict[str, int]:
    """Add ``tokens`` as un-normalised special tokens so that each encodes to exactly one id
    wherever it stands (after ':', after a space, at the start). Returns token -> id."""
    added = [AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False) for token in tokens]
    tokenizer.add_tokens(added, special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}
    unknown = [token for token, index in ids.items() if index is None or index == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"tokenizer could not register task tokens {unknown}")
    return ids


def load_tokenizer(path: str | Path, model_max_length: int) -> PreTrainedTokenizerBase:
    """Load an HF tokenizer directory (fast backend: offsets are needed for label masking)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=model_max_length, trust_remote_code=False)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: a fast tokenizer (tokenizer.json) is required for label masking")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def train_tiny_bpe(
    corpus: Iterable[str], vocab_size: int, output_dir: str | Path, extra_tokens: tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` and save it as an HF tokenizer directory.

    Special tokens follow LLaMA: ``<unk>`` (also padding), ``<s>``, ``</s>``; ``extra_tokens``
    become atomic vocabulary entries (never split, never merged).
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in extra_tokens])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    tokenizer.save_pretrained(str(output_dir))
    return tokenizer


def train_reference_bpe(conversations: list[str], vocab_size: int, output_dir: str | Path, seed: int = 0) -> Path:
    """A byte-level BPE of EXACTLY ``vocab_size`` entries (LLaMA's 32000 for the benchmarks): the
    ``conversations`` (their words become single tokens) padded with ~100 k distinct pseudo-words so
    that training reaches the size. Reuses ``output_dir`` when it already holds one."""
    output_dir = Path(output_dir)
    if not (output_dir / "tokenizer.json").is_file():
        rng = random.Random(seed)
        syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + [v + c for v in "aeiou" for c in "nrstlm"]
        words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 5))) for _ in range(120_000)})
        padding = [" ".join(words[start : start + 50]) for start in range(0, len(words), 50)]
        tokenizer = train_tiny_bpe([*conversations, *padding], vocab_size, output_dir)
        if len(tokenizer) != vocab_size:
            raise RuntimeError(f"the reference tokenizer has {len(tokenizer)} entries, expected {vocab_size}")
    return output_dir
