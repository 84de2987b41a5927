"""Conversation templates of the LLaVA checkpoints GSVA starts from (``llava_v1``, ``llava_llama_2``).

A template renders (question, answer) turns to one string and reports the character spans of the
assistant's answers, which are the only supervised tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    answer_spans: list[tuple[int, int]]
    """[start, end) character spans of each answer, including the space that opens it and its
    end-of-turn marker, so that a generation prompt ends right before the span."""


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    system: str
    user_prefix: str
    assistant_prefix: str
    turn_end: str
    first_turn_wrap: str
    """Format of the first user message; ``{system}`` and ``{message}`` are substituted."""

    def render(self, turns: list[tuple[str, str | None]]) -> RenderedConversation:
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


def get_template(name: str) -> ConversationTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
