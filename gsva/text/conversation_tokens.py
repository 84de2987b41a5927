"""Tokenise rendered conversations (``gsva.text.conversation``) into input ids and answer-only labels.

The text is split at the image placeholder; each piece is tokenised on its own (as LLaVA's
checkpoints were trained) and the placeholder becomes ``IMAGE_TOKEN_INDEX``. Labels come from
the tokenizer's character offsets: a token is supervised when it starts inside an answer span.
The tokenizer's BOS id opens the ids unless the tokenizer has none (Qwen) or the text already
starts with the BOS token (a chat template that writes ``{{ bos_token }}`` itself, as Llama 3's).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from gsva.text.conversation import RenderedConversation
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]


def tokenize_conversation(
    conversation: RenderedConversation, tokenizer: PreTrainedTokenizerBase
) -> TokenizedConversation:
    """Token ids with ``IMAGE_TOKEN_INDEX`` at the image placeholder; labels = ids inside answers."""
    ids = leading_bos(conversation.text, tokenizer)
    starts: list[int] = [-1] * len(ids)
    offset = 0
    for piece_index, piece in enumerate(conversation.text.split(IMAGE_PLACEHOLDER)):
        if piece_index > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            starts.append(-1)
            offset += len(IMAGE_PLACEHOLDER)
        if piece:
            encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            ids.extend(encoded["input_ids"])
            starts.extend(offset + start for start, _ in encoded["offset_mapping"])
        offset += len(piece)
    labels = [
        token if any(begin <= start < end for begin, end in conversation.answer_spans) else IGNORE_INDEX
        for token, start in zip(ids, starts)
    ]
    return TokenizedConversation(input_ids=ids, labels=labels)


def leading_bos(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The BOS id to put before ``text``'s tokens: none when the tokenizer has no BOS token or when
    ``text`` already starts with it (it is then tokenised with the text, once)."""
    if tokenizer.bos_token_id is None or text.startswith(tokenizer.bos_token):
        return []
    return [tokenizer.bos_token_id]
