"""Scoring: next-token log-probabilities, continuation log-likelihoods, KL divergence, cross-entropy.

Every function chat-formats prompts like :func:`refusal_steer.generation.generate`, left-pads batches,
and takes the same ``interventions``, so a steer is scored exactly as it generates. Batches are
left-padded so "the last k tokens" are the last k columns of every row, and the unembedding runs only
on those columns (``logits_to_keep``): a 150k-token vocabulary never materialises for every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError
from .batching import build_batch, forward, logits_to_keep, position_ids
from .generation import as_prompt, encode_prompts, length_order, run_with_backoff
from .hooks import Intervention, apply, prompt_boundary
from .models.loaded import LoadedModel


def _last_logprobs(lm: LoadedModel, token_lists: Sequence[Sequence[int]], keep: int) -> Tensor:
    """Log-softmax over the vocabulary at the last ``keep`` columns: (batch, keep, vocab) in float32 (float64 models keep float64).

    The batch's common prefix (the chat template's system prompt) is computed once (:mod:`.batching`).
    """
    batch = build_batch(lm, token_lists, keep=keep)
    logits = forward(lm, batch, **logits_to_keep(lm.model, keep)).logits
    return torch.log_softmax(logits[:, -keep:].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _batched(lm: LoadedModel, token_lists: Sequence[Sequence[int]], batch_size: int, fn: Any) -> list[Any]:
    """Run ``fn(indices)`` over length-sorted batches with out-of-memory back-off; results in input order."""
    results: list[Any] = [None] * len(token_lists)
    order = length_order([len(t) for t in token_lists])
    for indices, per_item in run_with_backoff(order, batch_size, fn, what="scoring batch"):
        for index, value in zip(indices, per_item):
            results[index] = value
    return results


def next_token_logprobs(
    lm: LoadedModel,
    prompts: Sequence[Any],
    interventions: Sequence[Intervention] = (),
    *,
    positions: Sequence[int] | None = None,
    batch_size: int = 8,
    system: str | None = None,
) -> Tensor:
    """Log-probabilities of the next token after chat-formatted prompts.

    Args:
        lm: the model.
        prompts: strings, message lists or dataset records.
        interventions: installed during the forward passes.
        positions: prompt-token indices to read (negative from the end, ``-1`` = last prompt token,
            the assistant header's last token); ``None`` reads only the last position.
        batch_size: prompts per forward pass.
        system: optional system prompt.

    Returns:
        ``(n, vocab)`` when ``positions`` is None, else ``(n, len(positions), vocab)``; float32.

    Example:
        >>> lp = next_token_logprobs(lm, ["Say yes."])  # doctest: +SKIP
        >>> lm.tokenizer.decode(lp[0].argmax())  # doctest: +SKIP
    """
    encoded = encode_prompts(lm, prompts, system=system)
    wanted = (-1,) if positions is None else tuple(int(p) for p in positions)
    for i, tokens in enumerate(encoded):
        for p in wanted:
            if not -len(tokens) <= p < len(tokens):
                raise ConfigError(f"position {p} is outside prompt {i} ({len(tokens)} tokens)")

    def run(indices: list[int]) -> list[Tensor]:
        lists = [encoded[i] for i in indices]
        # Distance of each wanted position from the end of its row (0 = last).
        back = [[(len(t) - 1 - p) if p >= 0 else (-1 - p) for p in wanted] for t in lists]
        keep = max(max(b) for b in back) + 1
        logprobs = _last_logprobs(lm, lists, keep)
        return [logprobs[row, [keep - 1 - d for d in back[row]]] for row in range(len(lists))]

    with apply(lm, interventions), torch.inference_mode():
        rows = _batched(lm, encoded, batch_size, run)
    out = torch.stack(rows)
    return out[:, 0] if positions is None else out


def _target_logprobs(
    lm: LoadedModel,
    contexts: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    interventions: Sequence[Intervention],
    batch_size: int,
) -> list[Tensor]:
    """Per-token log-probability of each ``targets[i]`` following ``contexts[i]`` (teacher forcing)."""
    for i, (context, target) in enumerate(zip(contexts, targets)):
        if not context or not target:
            raise ConfigError(f"item {i} needs at least one context token and one target token")
    full = [list(c) + list(t) for c, t in zip(contexts, targets)]

    def run(indices: list[int]) -> list[Tensor]:
        lists = [full[i] for i in indices]
        keep = max(len(targets[i]) for i in indices) + 1
        logprobs = _last_logprobs(lm, lists, keep)
        out = []
        for row, i in enumerate(indices):
            k = len(targets[i])
            # Columns -k-1 .. -2 predict the k target tokens (the last column predicts past the end).
            predicted = logprobs[row, keep - 1 - k: keep - 1]
            ids = torch.tensor(targets[i], device=predicted.device).unsqueeze(-1)
            out.append(predicted.gather(-1, ids).squeeze(-1).cpu())
        return out

    with apply(lm, interventions), torch.inference_mode():
        return _batched(lm, full, batch_size, run)


def _encode_continuations(lm: LoadedModel, continuations: Sequence[str]) -> list[list[int]]:
    return [list(lm.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations]


def continuation_loglik(
    lm: LoadedModel,
    prompts: Sequence[Any],
    continuations: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 8,
    system: str | None = None,
    reduction: str = "sum",
) -> Tensor:
    """Log-likelihood of each continuation as the start of the assistant's answer to its prompt.

    The continuation is tokenised on its own and appended after the chat-formatted prompt (so its
    tokens are exactly those scored, whatever the tokenizer would merge across the boundary).

    Args:
        prompts, continuations: equal-length lists.
        reduction: ``"sum"`` (total log-likelihood) or ``"mean"`` (per token).

    Returns:
        ``(n,)`` float32 tensor.

    Example:
        >>> continuation_loglik(lm, ["2+2=?"] * 2, ["4", "5"])  # doctest: +SKIP
    """
    if len(prompts) != len(continuations):
        raise ConfigError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    per_token = _target_logprobs(lm, encode_prompts(lm, prompts, system=system), _encode_continuations(lm, continuations), interventions, batch_size)
    return torch.stack([t.sum() if reduction == "sum" else t.mean() for t in per_token])


def choice_logliks(
    lm: LoadedModel,
    prompt: Any,
    choices: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 8,
    system: str | None = None,
) -> Tensor:
    """Log-likelihood of each answer choice (e.g. ``["A", "B", "C", "D"]``) after one prompt; argmax = pick."""
    return continuation_loglik(lm, [prompt] * len(choices), list(choices), interventions, batch_size=batch_size, system=system)


@dataclass(frozen=True)
class TokenLogprobs:
    """Teacher-forced log-probabilities of one token sequence: every token after the first, given the ones before.

    ``logprobs[i]`` and ``top[i]`` belong to ``token_ids[i + 1]``; ``top[i]`` holds the ``top_k`` most
    likely ``(token_id, logprob)`` at that position, best first (empty when ``top_k == 0``).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top: tuple[tuple[tuple[int, float], ...], ...]


def token_logprobs(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]] | None = None,
    interventions: Sequence[Intervention] = (),
    *,
    top_k: int = 0,
    batch_size: int = 4,
) -> list[TokenLogprobs]:
    """Log-probability of every token of ``prompt + continuation`` (token ids, no chat formatting).

    Continuation tokens sit where :func:`refusal_steer.generation.generate` puts generated tokens
    (after the left-padded prompts, ``prompt_boundary`` at the prompts' width), so a steer with
    ``positions="prompt"``/``"generated"`` scores them as it generated them. This is what the
    server's ``echo``/``logprobs`` answers are made of (likelihood tasks of lm-evaluation-harness send
    context and continuation as one prompt, so every token is a prompt token there, as in
    :func:`continuation_loglik`). One exception: a gate whose nested interventions sit at points before
    its own steers generated tokens (decided at prefill) but not continuation tokens scored here, since
    the whole sequence is one forward pass and the decision is made inside it.

    Returns:
        One :class:`TokenLogprobs` per prompt, in input order.

    Example:
        >>> ids = lm.tokenizer("The cat sat")["input_ids"]  # doctest: +SKIP
        >>> token_logprobs(lm, [ids], top_k=1)[0].logprobs  # doctest: +SKIP
    """
    prompts = [list(p) for p in prompts]
    conts = [list(c) for c in continuations] if continuations is not None else [[] for _ in prompts]
    if len(conts) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(conts)} continuations")
    if any(not p for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0, got {top_k}")
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    def run(indices: list[int]) -> list[TokenLogprobs]:
        width_p = max(len(prompts[i]) for i in indices)
        width_c = max(len(conts[i]) for i in indices)
        ids = torch.full((len(indices), width_p + width_c), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(indices):
            p, c = prompts[i], conts[i]
            ids[row, width_p - len(p): width_p] = torch.tensor(p)
            mask[row, width_p - len(p): width_p] = 1
            if c:
                ids[row, width_p: width_p + len(c)] = torch.tensor(c)
                mask[row, width_p: width_p + len(c)] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        with prompt_boundary(lm, width_p):
            logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
        out = []
        for row, i in enumerate(indices):
            start, end = width_p - len(prompts[i]), width_p + len(conts[i])
            logprobs = torch.log_softmax(logits[row, start: end - 1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            targets = ids[row, start + 1: end]
            chosen = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()
            top: tuple[tuple[tuple[int, float], ...], ...] = ()
            if top_k:
                values, top_ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
                top = tuple(tuple(zip(r_ids, r_values)) for r_ids, r_values in zip(top_ids.tolist(), values.tolist()))
            out.append(TokenLogprobs(token_ids=tuple(ids[row, start:end].tolist()), logprobs=tuple(chosen), top=top))
        return out

    full = [p + c for p, c in zip(prompts, conts)]
    with apply(lm, interventions), torch.inference_mode():
        return _batched(lm, full, batch_size, run)


@dataclass(frozen=True)
class KLResult:
    """KL(unsteered || steered) of the next-token distribution at the last prompt position."""

    per_prompt: Tensor
    mean: float
    n: int


def kl_divergence(
    lm: LoadedModel,
    prompts: Sequence[Any],
    interventions: Sequence[Intervention],
    *,
    batch_size: int = 8,
    system: str | None = None,
) -> KLResult:
    """How much a steer moves the next-token distribution at the end of each chat-formatted prompt.

    Computes ``KL(P_base || P_steered) = sum_v P_base(v) (log P_base(v) - log P_steered(v))`` at the
    last prompt position, the capability-cost measure of Arditi et al. (2024, §4.2) on harmless prompts.

    Returns:
        :class:`KLResult` with ``per_prompt`` (n,) in nats and their ``mean``.
    """
    prompts = list(prompts)
    values = []
    for start in range(0, len(prompts), max(1, batch_size) * 4):
        chunk = prompts[start:start + max(1, batch_size) * 4]
        base = next_token_logprobs(lm, chunk, (), batch_size=batch_size, system=system)
        steered = next_token_logprobs(lm, chunk, interventions, batch_size=batch_size, system=system)
        values.append((base.exp() * (base - steered)).sum(-1).clamp_min(0).cpu())
    per_prompt = torch.cat(values) if values else torch.zeros(0)
    return KLResult(per_prompt=per_prompt, mean=float(per_prompt.mean()) if len(per_prompt) else float("nan"), n=len(per_prompt))


@dataclass(frozen=True)
class CrossEntropyResult:
    """Mean token cross-entropy (nats): per item and pooled over all scored tokens."""

    per_item: Tensor
    mean: float
    n_tokens: int


def cross_entropy(
    lm: LoadedModel,
    items: Sequence[str | tuple[Any, str]],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 8,
    system: str | None = None,
) -> CrossEntropyResult:
    """Cross-entropy of text under the (steered) model.

    Args:
        items: a ``str`` is raw text, every token after the first is scored (no chat template); a
            ``(prompt, response)`` pair is chat text: the response is scored as the assistant's answer.

    Returns:
        :class:`CrossEntropyResult` (``mean`` pools tokens over all items).
    """
    contexts, targets = [], []
    for i, item in enumerate(items):
        if isinstance(item, str):
            tokens = list(lm.tokenizer(item)["input_ids"])
            if len(tokens) < 2:
                raise ConfigError(f"text {i} has fewer than 2 tokens; nothing to score")
            contexts.append(tokens[:1])
            targets.append(tokens[1:])
        else:
            prompt, response = item
            contexts.append(encode_prompts(lm, [as_prompt(prompt)], system=system)[0])
            targets.append(_encode_continuations(lm, [response])[0])
    per_token = _target_logprobs(lm, contexts, targets, interventions, batch_size)
    n_tokens = sum(len(t) for t in per_token)
    per_item = torch.stack([-t.mean() for t in per_token]) if per_token else torch.zeros(0)
    mean = float(-torch.cat(per_token).sum() / n_tokens) if n_tokens else float("nan")
    return CrossEntropyResult(per_item=per_item, mean=mean, n_tokens=n_tokens)
