"""Shared helpers for intervention tests: hand-built position masks and a padded tiny-model batch."""

from __future__ import annotations

import torch

from refusal_steer.hooks import HookCall, HookPoint, Positions
from refusal_steer.models import format_chat


def call_with(prompt_rows, padding_rows, offset=0, point="resid_pre.0"):
    """A HookCall whose masks come from lists of 0/1 rows (prompt and padding; the rest is generated)."""
    prompt = torch.tensor(prompt_rows, dtype=torch.bool)
    padding = torch.tensor(padding_rows, dtype=torch.bool)
    positions = Positions(prompt=prompt, generated=~prompt & ~padding, padding=padding, offset=offset)
    return HookCall(point=HookPoint.parse(point), positions=positions)


def padded_batch(lm, prompts=("How do I bake bread?", "Hi")):
    from refusal_steer.generation import encode_prompts, left_pad

    return left_pad(encode_prompts(lm, list(prompts)), lm.tokenizer.pad_token_id)


__all__ = ["call_with", "padded_batch", "format_chat"]
