"""Which token positions an intervention touches: all, prompt only, generated only, or explicit indices.

A selector turns the hook engine's per-call :class:`~refusal_steer.hooks.Positions` (boolean masks of
prompt, generated and padding tokens) into one mask. Padding is never steered. Explicit indices count
the *prompt tokens* of each row from their first real token (``0, 1, ...``), or from the end of the
prompt when negative (``-1`` is the last prompt token), so they mean the same token in a left-padded
batch as in a single prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import torch
from torch import Tensor

from ..errors import ConfigError
from ..hooks import Positions

PositionName = Literal["all", "prompt", "generated"]
PositionSpec = Union[PositionName, tuple[int, ...]]

_NAMES = ("all", "prompt", "generated")


def parse_positions(spec: str | Sequence[int] | PositionSpec) -> PositionSpec:
    """Normalise a position selector: ``"all"``, ``"prompt"``, ``"generated"`` or indices (``"-1,-2"`` too).

    Example:
        >>> parse_positions("prompt"), parse_positions([-1, -2]), parse_positions("0,3")
        ('prompt', (-1, -2), (0, 3))
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text in _NAMES:
            return text  # type: ignore[return-value]
        try:
            indices = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise ConfigError(
                f"positions {spec!r} is not one of {', '.join(_NAMES)} or a list of integers",
                fix="write positions: all | prompt | generated | -1,-2,...",
            ) from None
    else:
        try:
            indices = tuple(int(i) for i in spec)
        except (TypeError, ValueError):
            raise ConfigError(f"positions {spec!r} is not a list of integers", fix="write e.g. positions=[-1, -2]") from None
    if not indices:
        raise ConfigError("positions is an empty list of indices", fix="give at least one index, or use 'all'")
    return indices


# One mask per (forward call, selector, dtype): every hook of every intervention in the same forward
# call receives the same Positions object, so the mask is built once per call, not once per hook.
_MASKS: dict[tuple[PositionSpec, torch.dtype], tuple[Positions, Tensor | None]] = {}


def position_mask(spec: PositionSpec, positions: Positions, dtype: torch.dtype) -> Tensor | None:
    """A ``(batch, seq, 1)`` mask of ``dtype`` (1 = steer), or ``None`` when every token is steered."""
    key = (spec, dtype)
    cached = _MASKS.get(key)
    if cached is not None and cached[0] is positions:
        return cached[1]
    mask = _build(spec, positions)
    out = None if mask is None else mask.unsqueeze(-1).to(dtype)
    _MASKS[key] = (positions, out)
    return out


def prompt_indices(positions: Positions) -> tuple[Tensor, Tensor]:
    """Each token's index among its row's prompt tokens, counted from the start and from the end (``-1`` = last).

    Prompt tokens computed in an earlier call (a shared prefix in the KV cache) count too, so an index
    means the same token with and without prefix sharing; values at non-prompt tokens are meaningless
    (mask them with ``positions.prompt``).
    """
    prompt = positions.prompt
    before = positions.prompt_before.unsqueeze(1) if positions.prompt_before is not None else 0
    from_start = prompt.cumsum(dim=1) - 1 + before
    from_end = from_start - prompt.sum(dim=1, keepdim=True) - before - positions.prompt_after
    return from_start, from_end


def steered_mask(positions: Positions, spec: PositionSpec, *, skip_prompt: int = 0) -> Tensor:
    """A ``(batch, seq)`` bool mask: the tokens ``spec`` selects, never padding, minus each prompt's first ``skip_prompt`` tokens.

    ``skip_prompt`` leaves a chat template's fixed prefix alone (an SAE not trained on it); the first
    tokens are counted from the true start of the prompt, shared prefix included.
    """
    mask = _build(spec, positions)
    mask = ~positions.padding if mask is None else mask
    if skip_prompt > 0:
        from_start, _ = prompt_indices(positions)
        mask = mask & ~(positions.prompt & (from_start < skip_prompt))
    return mask


def where_steered(out: Tensor, x: Tensor, positions: Positions, spec: PositionSpec, *, skip_prompt: int = 0) -> Tensor:
    """``out`` at the tokens :func:`steered_mask` selects, ``x`` elsewhere (a kind that rewrites the whole activation).

    A call whose position masks do not match ``x`` (a plain forward without padding information) is steered everywhere.
    """
    if positions.prompt.shape != x.shape[:2]:
        return out
    steer = steered_mask(positions, spec, skip_prompt=skip_prompt)
    if bool(steer.all()):
        return out
    return torch.where(steer.unsqueeze(-1), out, x)


def _build(spec: PositionSpec, positions: Positions) -> Tensor | None:
    if spec == "all":
        return None if not positions.padding.any() else ~positions.padding
    if spec == "prompt":
        return positions.prompt
    if spec == "generated":
        return positions.generated
    prompt = positions.prompt
    from_start, from_end = prompt_indices(positions)
    mask = torch.zeros_like(prompt)
    for index in spec:  # type: ignore[union-attr]
        mask |= (from_end if index < 0 else from_start).eq(index)
    return mask & prompt
