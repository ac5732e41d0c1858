"""Padded batches whose common prefix is computed once.

Chat templates put the same tokens before every prompt: Qwen's default system prompt and user header
are 24 tokens, more than half of a typical AdvBench prompt. :func:`build_batch` runs that shared
prefix once, as a batch of one, with the installed interventions, repeats its KV cache over the
batch and lays the rest out after it, left-padded: ``[prefix | padding | suffix]``. Explicit position
ids and the attention mask give every row the positions and attention it has in the plain
left-padded batch ``[padding | prefix | suffix]``, so logits agree to float rounding (tested on every
supported family) while the prompt is computed about twice as fast on chat-formatted instructions.

Interventions see the prefix as prompt tokens of the first forward call, and
:class:`refusal_steer.hooks.Positions` counts prompt tokens already in the cache, so every position
selector (all, prompt, generated, explicit indices) means the same with and without sharing.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .hooks import HookPoint, Recorder, StopForward, apply, installed_interventions, prompt_boundary, prompt_continues
from .interventions.registry import walk
from .models.loaded import LoadedModel

MIN_SHARED_PREFIX = 8
"""Shorter common prefixes are not worth a separate forward call."""


def common_prefix_length(token_lists: Sequence[Sequence[int]], *, keep: int = 1) -> int:
    """Length of the prefix shared by every list, leaving at least ``keep`` tokens of each outside it."""
    if not token_lists:
        return 0
    limit = min(len(t) for t in token_lists) - keep
    first = token_lists[0]
    length = 0
    while length < limit and all(t[length] == first[length] for t in token_lists):
        length += 1
    return max(length, 0)


@dataclass
class Batch:
    """Inputs of one forward call over a padded batch, possibly after a shared prefix in the KV cache.

    ``input_ids`` and ``position_ids`` cover only the tokens this call computes (``(batch, width)``);
    ``attention_mask`` covers the prefix too (``(batch, prefix_length + width)``). The last column is
    every row's last token either way, so "the last k positions" are the last k columns.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    prefix_ids: Tensor | None = None
    """``(1, prefix_length)``: the shared prefix's tokens, already in ``past_key_values``."""
    past_key_values: Any = None
    cache_key: str = "past_key_values"
    """The keyword the model takes the cache under (see :func:`cache_kwarg`)."""

    @property
    def prefix_length(self) -> int:
        return 0 if self.prefix_ids is None else int(self.prefix_ids.shape[1])

    @property
    def total_width(self) -> int:
        """Prefix plus padded width: the prompt boundary for :func:`refusal_steer.hooks.prompt_boundary`."""
        return int(self.attention_mask.shape[1])

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for ``model(...)``."""
        inputs: dict[str, Any] = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}
        if self.past_key_values is not None:
            inputs.update({self.cache_key: self.past_key_values}, use_cache=True)
        else:
            inputs["use_cache"] = False
        return inputs

    def generate_inputs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: full ``input_ids`` (prefix included) and the filled cache."""
        if self.prefix_ids is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        ids = torch.cat([self.prefix_ids.expand(self.input_ids.shape[0], -1), self.input_ids], dim=1)
        return {"input_ids": ids, "attention_mask": self.attention_mask, self.cache_key: self.past_key_values}


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name ``model.forward`` and ``model.generate`` take a KV cache under: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def logits_to_keep(model: torch.nn.Module, keep: int) -> dict[str, int]:
    """``{"logits_to_keep": keep}`` when the model's forward takes it (unembed only the last columns), else ``{}``."""
    return {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def left_pad(token_lists: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Left-pad token lists into ``input_ids`` and ``attention_mask`` tensors of shape (batch, max_len)."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        if tokens:
            ids[row, width - len(tokens):] = torch.tensor(list(tokens), dtype=torch.long)
            mask[row, width - len(tokens):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids that start at 0 on each row's first real token (what ``model.generate`` derives).

    A plain forward pass over a left-padded batch needs them: without them absolute-position models
    (GPT-2) would see every row shifted by its padding.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def sliding_window(lm: LoadedModel) -> int | None:
    """The smallest attention window the model uses, or None when every layer attends to everything.

    Windows count cache slots, and padding sits inside the shared layout, so sharing is only used
    when the whole sequence fits in the window.
    """
    config = lm.model.config
    text = getattr(config, "text_config", None) or config
    if getattr(text, "use_sliding_window", True) is False:
        return None
    windows = [getattr(text, name, None) for name in ("sliding_window", "attention_chunk_size")]
    windows = [w for w in windows if isinstance(w, int) and w > 0]
    return min(windows) if windows else None


def shared_prefix_length(
    lm: LoadedModel, token_lists: Sequence[Sequence[int]], *, keep: int = 1, max_prefix: int | None = None, extra_tokens: int = 0
) -> int:
    """How many leading tokens :func:`build_batch` will compute once for this batch (0: no sharing)."""
    if len(token_lists) < 2:
        return 0
    length = common_prefix_length(token_lists, keep=keep)
    if max_prefix is not None:
        length = min(length, max_prefix)
    if length < MIN_SHARED_PREFIX:
        return 0
    window = sliding_window(lm)
    if window is not None and max(len(t) for t in token_lists) + extra_tokens > window:
        return 0
    if not _indices_outside_prefix(lm, min(len(t) for t in token_lists) - length):
        return 0
    return length


def _indices_outside_prefix(lm: LoadedModel, min_suffix: int) -> bool:
    """False if an installed intervention steers a prompt index counted from the end that, for some
    row, would fall inside the shared prefix (one prefix cannot be steered differently per row), or
    declares ``prefix_safe = False`` (an intervention that would steer prompt tokens per row before the
    whole prompt is seen; a gate does not: it never steers a prompt token before its last)."""
    for intervention in walk(installed_interventions(lm)):
        if not getattr(intervention, "prefix_safe", True):  # an optional capability; the protocol's default is True
            return False
        spec = intervention.positions
        if isinstance(spec, tuple) and any(isinstance(i, int) and i < 0 and -i > min_suffix for i in spec):
            return False
    return True


def build_batch(
    lm: LoadedModel,
    token_lists: Sequence[Sequence[int]],
    *,
    share_prefix: bool = True,
    keep: int = 1,
    max_prefix: int | None = None,
    stop_after: HookPoint | None = None,
    extra_tokens: int = 0,
    grad: bool = False,
) -> Batch:
    """Left-pad ``token_lists``; with ``share_prefix``, compute their common prefix now, once.

    The prefix runs under whatever interventions are installed, so call this inside the same
    :func:`refusal_steer.hooks.apply` block as the forward pass that uses the batch (and before a
    recorder is installed, or it would record the prefix call too).

    Args:
        keep: tokens at the end of every row that must be computed in the batch's own call (the
            positions the caller reads).
        max_prefix: never share more than this many leading tokens (the caller reads from there on).
        stop_after: the caller's forward stops after this point, so the prefix stops there too.
        extra_tokens: tokens generated after the prompt (for the sliding-window check).
        grad: keep the prefix's autograd graph (its cache is repeated over the batch, so gradients
            from every row add up in the prefix).
    """
    device = lm.device
    pad_id = lm.tokenizer.pad_token_id
    length = shared_prefix_length(lm, token_lists, keep=keep, max_prefix=max_prefix, extra_tokens=extra_tokens) if share_prefix else 0
    if length == 0:
        padded = left_pad(token_lists, pad_id, device)
        mask = padded["attention_mask"]
        return Batch(input_ids=padded["input_ids"], attention_mask=mask, position_ids=position_ids(mask))
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    key = cache_kwarg(lm.model)
    prefix = torch.tensor([list(token_lists[0][:length])], dtype=torch.long, device=device)
    suffix = left_pad([t[length:] for t in token_lists], pad_id, device)
    ids, suffix_mask = suffix["input_ids"], suffix["attention_mask"]
    mask = torch.cat([torch.ones(len(token_lists), length, dtype=torch.long, device=device), suffix_mask], dim=1)
    stopper = [Recorder((stop_after,), stop_after_last=True)] if stop_after is not None else []
    min_suffix = min(len(t) for t in token_lists) - length
    with prompt_boundary(lm, length + ids.shape[1]), prompt_continues(lm, min_suffix), apply(lm, stopper), torch.set_grad_enabled(grad):
        try:
            lm.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), position_ids=position_ids(torch.ones_like(prefix)),
                     **{key: cache}, use_cache=True, **logits_to_keep(lm.model, 1))
        except StopForward:
            pass
    cache.batch_repeat_interleave(len(token_lists))
    return Batch(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)[:, length:], prefix_ids=prefix, past_key_values=cache, cache_key=key)


def forward(lm: LoadedModel, batch: Batch, **kwargs: Any) -> Any:
    """``lm.model(...)`` on ``batch`` with the prompt boundary set (interventions must already be installed)."""
    with prompt_boundary(lm, batch.total_width):
        return lm.model(**batch.model_inputs(), **kwargs)


def record_batch(
    lm: LoadedModel, token_lists: Sequence[Sequence[int]], points: Sequence[HookPoint], extra: Sequence[Any] = (), *,
    share_prefix: bool = True, keep: int = 1, max_prefix: int | None = None,
) -> dict[HookPoint, Tensor]:
    """Activations at ``points`` over the batch's own columns (``(batch, width, d)``); stops after the deepest point.

    ``extra`` interventions (a steer) act on the prefix and the batch alike, before the recorder.
    """
    recorder = Recorder(tuple(points), stop_after_last=True)
    with apply(lm, list(extra)), torch.no_grad():
        batch = build_batch(lm, token_lists, share_prefix=share_prefix, keep=keep, max_prefix=max_prefix, stop_after=recorder.deepest)
        with apply(lm, [recorder]):
            try:
                forward(lm, batch)
            except StopForward:
                pass
    return {point: recorder[point] for point in recorder.record_points}
