"""Chat formatting through the model's own template, and the post-instruction token positions.

Arditi et al. (2024, §2.2) take difference-in-means activations at the tokens that follow the user's
instruction (the end-of-turn and assistant header, e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``). We
find that suffix from the template itself, so it is right for every family without per-family code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from ..errors import ChatTemplateError, ConfigError

logger = logging.getLogger(__name__)

Message = dict[str, str]
Conversation = list[Message]
PromptLike = Union[str, Sequence[Message]]

# Used for base models without a chat template (e.g. GPT-2); documented in README ("Chat templates").
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_PLACEHOLDER = "\u2063REFUSAL_STEER_INSTRUCTION\u2063"


def to_messages(prompt: PromptLike, system: str | None = None) -> Conversation:
    """Turn a plain instruction or a list of ``{"role", "content"}`` messages into a conversation."""
    if isinstance(prompt, str):
        messages: Conversation = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        for i, message in enumerate(messages):
            if "role" not in message or "content" not in message:
                raise ConfigError(f"message {i} needs 'role' and 'content' keys, got {sorted(message)}")
    if system is not None:
        messages = [m for m in messages if m["role"] != "system"]
        messages.insert(0, {"role": "system", "content": system})
    if not messages:
        raise ConfigError("empty conversation", fix="give at least one user message")
    return messages


def _template(tokenizer: Any, chat_template: str | None) -> str:
    if chat_template:
        return chat_template
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    logger.warning("tokenizer has no chat template; using the plain 'User:/Assistant:' fallback")
    return FALLBACK_CHAT_TEMPLATE


def format_chat(
    tokenizer: Any,
    prompt: PromptLike,
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
) -> str:
    """Render one prompt or conversation with the model's chat template, ending at the assistant's turn.

    Example:
        >>> text = format_chat(lm.tokenizer, "How do I bake bread?")  # doctest: +SKIP
    """
    messages = to_messages(prompt, system)
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=_template(tokenizer, chat_template)
        )
    except Exception as exc:  # jinja errors (e.g. templates that reject system roles)
        raise ChatTemplateError(f"the chat template failed to render: {exc}", fix="check the roles you pass or give chat_template=...") from exc


@dataclass(frozen=True)
class PostInstruction:
    """The template text after the user's instruction and its tokens (end of turn + assistant header)."""

    text: str
    token_ids: tuple[int, ...]

    @property
    def n_positions(self) -> int:
        return len(self.token_ids)


def post_instruction(tokenizer: Any, *, system: str | None = None, chat_template: str | None = None) -> PostInstruction:
    """Find the post-instruction suffix of this tokenizer's chat template.

    The positions ``-n_positions .. -1`` of every formatted prompt are the post-instruction positions.
    """
    rendered = format_chat(tokenizer, _PLACEHOLDER, system=system, chat_template=chat_template)
    if rendered.count(_PLACEHOLDER) != 1:
        raise ChatTemplateError("could not locate the instruction inside the rendered chat template")
    suffix = rendered.split(_PLACEHOLDER, 1)[1]
    if not suffix:
        raise ChatTemplateError("the chat template adds nothing after the instruction; no post-instruction positions")
    # Tokenise in context and keep the tokens that start inside the suffix: exact even when the
    # boundary would merge differently if the suffix were tokenised alone.
    probe = format_chat(tokenizer, "Hello there.", system=system, chat_template=chat_template)
    start_char = len(probe) - len(suffix)
    ids = tokenize_exact(tokenizer, probe)
    encoding = tokenizer(probe, add_special_tokens=False, return_offsets_mapping=True) if getattr(tokenizer, "is_fast", False) else None
    if encoding is not None:
        offsets = encoding["offset_mapping"]
        suffix_ids = tuple(int(t) for t, (start, _end) in zip(ids, offsets) if start >= start_char)
    else:
        suffix_ids = tuple(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    if not suffix_ids or tuple(ids[-len(suffix_ids):]) != suffix_ids:
        raise ChatTemplateError("post-instruction tokens do not line up with the end of the formatted prompt")
    return PostInstruction(text=suffix, token_ids=suffix_ids)


def tokenize_exact(tokenizer: Any, text: str) -> list[int]:
    """Tokenise already-formatted chat text without adding a second BOS (templates include their own)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
