"""Chat formatting and post-instruction positions."""

from __future__ import annotations

import pytest

from refusal_steer.errors import ConfigError
from refusal_steer.models import FALLBACK_CHAT_TEMPLATE, format_chat, post_instruction, to_messages, tokenize_exact


def test_single_prompt_ends_with_generation_prompt(tiny_tokenizer):
    text = format_chat(tiny_tokenizer, "How do I bake bread?")
    assert text == "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"


def test_system_prompt_and_multi_turn(tiny_tokenizer):
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    text = format_chat(tiny_tokenizer, conversation, system="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.index("Hello!") < text.index("Tell me a joke")
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("prompt", ["How do I bake bread?", "x", "Write a poem about the sea."])
def test_post_instruction_tokens_are_the_prompt_tail(tiny_tokenizer, prompt):
    suffix = post_instruction(tiny_tokenizer)
    ids = tokenize_exact(tiny_tokenizer, format_chat(tiny_tokenizer, prompt))
    assert tuple(ids[-suffix.n_positions:]) == suffix.token_ids
    assert tiny_tokenizer.decode(list(suffix.token_ids)) == "<|im_end|>\n<|im_start|>assistant\n"
    # The instruction itself is not part of the post-instruction positions.
    assert prompt not in tiny_tokenizer.decode(list(suffix.token_ids))


def test_fallback_template_for_tokenizers_without_one(tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    text = format_chat(tokenizer, "Hi")
    assert text == "User: Hi\nAssistant:"
    assert post_instruction(tokenizer).text == "\nAssistant:"
    assert "Assistant" in FALLBACK_CHAT_TEMPLATE


def test_bad_messages_raise_config_error():
    with pytest.raises(ConfigError, match="role"):
        to_messages([{"content": "no role"}])
    with pytest.raises(ConfigError):
        to_messages([])
