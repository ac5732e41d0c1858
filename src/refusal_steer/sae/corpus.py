"""The token mix SAEs are trained and evaluated on: chat conversations plus harmful and harmless instructions.

Every sequence is rendered with the model's own chat template, so the SAE sees the contexts it will be
used in (Kissane et al. 2024 find SAEs trained on chat-model activations give cleaner refusal latents).
Conversations are rendered without a trailing generation prompt; instructions end at the assistant
header, which is where refusal is decided. The template's fixed prefix (Qwen's default system prompt,
whose first token is an attention sink with a norm ~100x the rest) is the same in every sequence:
:func:`template_prefix_length` measures it so that caching and splicing can leave it out.

Train and held-out mixes come from disjoint dataset splits (``split="train"`` vs ``"test"``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..data import load_dataset
from ..errors import ConfigError
from ..generation import as_prompt
from ..models.chat import format_chat, tokenize_exact
from ..models.loaded import LoadedModel


@dataclass(frozen=True)
class TokenMix:
    """Which datasets make up the mix and in what proportion of tokens."""

    chat: str = "sharegpt"
    harmful: tuple[str, ...] = ("advbench", "harmbench-prompts")
    harmless: str = "harmless"
    chat_fraction: float = 0.8
    """Share of tokens from conversations; the rest is split evenly between harmful and harmless instructions."""
    max_length: int = 256
    """Truncate each rendered sequence to this many tokens (long chats would otherwise dominate)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.chat_fraction <= 1.0:
            raise ConfigError(f"chat_fraction must be in [0, 1], got {self.chat_fraction}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length}")


def template_prefix_length(lm: LoadedModel) -> int:
    """Tokens every chat-formatted prompt starts with (system block and user header), from two renderings."""
    a = tokenize_exact(lm.tokenizer, format_chat(lm.tokenizer, "Hello there."))
    b = tokenize_exact(lm.tokenizer, format_chat(lm.tokenizer, "Write a poem."))
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _render(lm: LoadedModel, record: object) -> list[int]:
    prompt = as_prompt(record)
    ends_with_answer = isinstance(prompt, list) and bool(prompt) and prompt[-1].get("role") == "assistant"
    text = format_chat(lm.tokenizer, prompt, add_generation_prompt=not ends_with_answer)
    return tokenize_exact(lm.tokenizer, text)


def _take(lm: LoadedModel, names: tuple[str, ...], split: str, seed: int, budget: int, max_length: int, skip: int) -> list[list[int]]:
    """Sequences from ``names`` (shuffled, round-robin) until ``budget`` tokens past the prefix are collected."""
    pools = []
    for name in names:
        records = list(load_dataset(name, split=split, seed=seed))
        random.Random(f"{seed}:{name}:{split}").shuffle(records)
        pools.append(records)
    out: list[list[int]] = []
    total = 0
    index = 0
    while total < budget and any(index < len(pool) for pool in pools):
        for pool in pools:
            if index < len(pool) and total < budget:
                tokens = _render(lm, pool[index])[:max_length]
                if len(tokens) > skip + 1:
                    out.append(tokens)
                    total += len(tokens) - skip
        index += 1
    return out


def mix_token_lists(lm: LoadedModel, n_tokens: int, *, split: str = "train", mix: TokenMix = TokenMix(), seed: int = 0) -> tuple[list[list[int]], int]:
    """Token sequences totalling about ``n_tokens`` tokens after the shared prefix, and that prefix's length.

    Example:
        >>> sequences, skip = mix_token_lists(lm, 200_000)  # doctest: +SKIP
        >>> cache_token_activations(lm, sequences, "resid_pre.14", "acts", skip_tokens=skip)  # doctest: +SKIP
    """
    if n_tokens < 1:
        raise ConfigError(f"n_tokens must be >= 1, got {n_tokens}")
    skip = template_prefix_length(lm)
    n_chat = int(round(n_tokens * mix.chat_fraction))
    n_each = (n_tokens - n_chat) // 2
    harmful = _take(lm, mix.harmful, split, seed, n_each, mix.max_length, skip)
    harmless = _take(lm, (mix.harmless,), split, seed, n_each, mix.max_length, skip)
    have = sum(len(t) - skip for t in harmful + harmless)
    # Instruction lists are small: conversations make up whatever they cannot supply.
    chat = _take(lm, (mix.chat,), split, seed, n_tokens - have, mix.max_length, skip)
    sequences = chat + harmful + harmless
    random.Random(seed).shuffle(sequences)
    return sequences, skip


__all__ = ["TokenMix", "template_prefix_length", "mix_token_lists"]
