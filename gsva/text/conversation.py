"""Conversation templates: those of the LLaVA checkpoints GSVA starts from (``llava_v1``,
``llava_llama_2``), and ``chat_template``, the checkpoint tokenizer's own Jinja chat template
(Qwen2.5-VL, InternVL, LLaVA-NeXT).

A template renders (question, answer) turns to one string and reports the character spans of the
assistant's answers, which are the only supervised tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

Turns = list[tuple[str, str | None]]
"""(question, answer) turns; an answer of None (last turn only) asks for the answer: the rendering
ends with the generation prompt."""


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    answer_spans: list[tuple[int, int]]
    """[start, end) character spans of each answer with its end-of-turn marker (and, in LLaVA's
    templates, the space that opens it), so that a generation prompt ends right before the span."""


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    system: str
    user_prefix: str
    assistant_prefix: str
    turn_end: str
    first_turn_wrap: str
    """Format of the first user message; ``{system}`` and ``{message}`` are substituted."""

    def render(self, turns: Turns) -> RenderedConversation:
        """Render turns of (question, answer). An answer of None leaves the assistant prefix open
        (the prompt for generation); it may only be the last turn."""
        text = ""
        spans: list[tuple[int, int]] = []
        for index, (question, answer) in enumerate(turns):
            if index == 0:
                text += self.first_turn_wrap.format(system=self.system, message=question)
            else:
                text += self.user_prefix + question
            text += self.assistant_prefix
            if answer is None:
                if index != len(turns) - 1:
                    raise ValueError("only the last turn may be left without an answer")
                break
            start = len(text)
            text += " " + answer + self.turn_end
            spans.append((start, len(text)))
        return RenderedConversation(text=text, answer_spans=spans)


LLAVA_V1 = ConversationTemplate(
    name="llava_v1",
    system=(
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    ),
    user_prefix="USER: ",
    assistant_prefix=" ASSISTANT:",
    turn_end="</s>",
    first_turn_wrap="{system} USER: {message}",
)

LLAVA_LLAMA_2 = ConversationTemplate(
    name="llava_llama_2",
    system=(
        "You are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language."
    ),
    user_prefix="<s>[INST] ",
    assistant_prefix=" [/INST]",
    turn_end=" </s>",
    first_turn_wrap="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{message}",
)

TEMPLATES = {template.name: template for template in (LLAVA_V1, LLAVA_LLAMA_2)}

CHAT_TEMPLATE = "chat_template"
"""``data.conversation`` of a backbone prompted with its checkpoint tokenizer's own chat template."""

Messages = list[dict[str, Any]]

TEXT_PROBE = ("which colour is the sky", "blue, mostly")
"""A question and answer that a chat template must render verbatim (to tell how it takes content)."""


def chat_messages(turns: Turns) -> Messages:
    """(question, answer) turns -> chat messages (user, assistant, user, ...); an answer of None
    (last turn only) is left out."""
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    messages: Messages = []
    for index, (question, answer) in enumerate(turns):
        messages.append({"role": "user", "content": question})
        if answer is None:
            if index != len(turns) - 1:
                raise ValueError("only the last turn may be left without an answer")
            break
        messages.append({"role": "assistant", "content": answer})
    return messages


def typed_items(messages: Messages) -> Messages:
    """Messages with their string content as one typed text item, ``[{"type": "text", "text": ...}]``."""
    return [{**message, "content": [{"type": "text", "text": message["content"]}]} for message in messages]


@dataclass(frozen=True)
class ChatTemplate:
    """Conversations rendered by ``tokenizer.apply_chat_template``: the Jinja chat template of the
    checkpoint's tokenizer, with its own system prompt, turn markers and generation prompt.

    Answer k spans from the end of the generation prompt that follows question k to the end of the
    rendering of the conversation up to answer k: the answer, its end-of-turn token (e.g.
    ``<|im_end|>``) and what the template writes after it before the next turn. The template must
    render every conversation as a prefix of its continuations (``ValueError`` otherwise).

    Content is passed as plain strings (ChatML templates, Qwen's and InternVL's) or, for templates
    that only read typed items (llava-hf's, which drop a string's text without an error), as one
    ``{"type": "text"}`` item per message: ``typed_content`` decides which, once.
    """

    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    name: str = CHAT_TEMPLATE

    def __post_init__(self) -> None:
        if not self.tokenizer.chat_template:
            raise ValueError(
                f"data.conversation={CHAT_TEMPLATE} renders with the tokenizer's chat template, but the tokenizer "
                f"of {self.tokenizer.name_or_path!r} has no chat template (read from chat_template.jinja or "
                "'chat_template' in tokenizer_config.json; a processor's chat_template.json is not read)"
            )

    def render(self, turns: Turns) -> RenderedConversation:
        """Render turns of (question, answer); an answer of None (last turn only) ends the text
        with the generation prompt."""
        messages = chat_messages(turns)
        text = self.apply(messages, add_generation_prompt=turns[-1][1] is None)
        spans = [self.answer_span(messages, index, text) for index in range(1, len(messages), 2)]
        return RenderedConversation(text=text, answer_spans=spans)

    @cached_property
    def typed_content(self) -> bool:
        """Whether the template takes message content as typed items rather than plain strings: the
        form in which it renders the text of ``TEXT_PROBE``'s question and answer (strings first).
        ``ValueError`` when neither form renders them."""
        probe = chat_messages([TEXT_PROBE])
        for typed in (False, True):
            try:
                text = self.tokenizer.apply_chat_template(typed_items(probe) if typed else probe, tokenize=False)
            except (TemplateError, TypeError):
                continue
            if all(part in text for part in TEXT_PROBE):
                return typed
        raise ValueError(
            f"the chat template of {self.tokenizer.name_or_path!r} renders the text of neither plain-string nor "
            "typed ({'type': 'text', 'text': ...}) message content; give the tokenizer a template that writes "
            "each message's text, or use data.conversation=llava_v1"
        )

    def apply(self, messages: Messages, add_generation_prompt: bool) -> str:
        """``messages`` rendered by the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(
            typed_items(messages) if self.typed_content else messages,
            tokenize=False, add_generation_prompt=add_generation_prompt,
        )

    def answer_span(self, messages: Messages, answer_index: int, text: str) -> tuple[int, int]:
        """[start, end) characters of the assistant message ``messages[answer_index]`` in ``text``,
        the rendering of ``messages`` (or of a continuation of them)."""
        prompt = self.apply(messages[:answer_index], add_generation_prompt=True)
        answered = self.apply(messages[: answer_index + 1], add_generation_prompt=False)
        if not (answered.startswith(prompt) and text.startswith(answered)):
            raise ValueError(
                f"the chat template of {self.tokenizer.name_or_path!r} does not render a conversation as a prefix "
                f"of its continuation (answer {answer_index // 2 + 1}): its answers cannot be located"
            )
        return len(prompt), len(answered)


ConversationFormat = ConversationTemplate | ChatTemplate
"""What renders a model's conversations (``PromptSettings.template``)."""


def get_template(name: str, tokenizer: PreTrainedTokenizerBase | None = None) -> ConversationFormat:
    """The template ``data.conversation`` = ``name`` names; ``chat_template`` renders with
    ``tokenizer``'s chat template (the checkpoint's tokenizer, required)."""
    if name == CHAT_TEMPLATE:
        if tokenizer is None:
            raise ValueError(f"conversation template {CHAT_TEMPLATE!r} needs the checkpoint's tokenizer")
        return ChatTemplate(tokenizer)
    if name not in TEMPLATES:
        raise ValueError(
            f"unknown conversation template {name!r}; expected one of {sorted([*TEMPLATES, CHAT_TEMPLATE])}"
        )
    return TEMPLATES[name]
