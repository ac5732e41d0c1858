"""Batched, left-padded forward passes over already-tokenised sequences (private to evaluation).

:mod:`refusal_steer.scoring` scores chat-formatted prompts; multiple choice needs the assistant turn
prefilled (``...<|im_start|>assistant\nAnswer:``), so it scores token lists it builds itself here.

Left padding needs explicit ``position_ids`` in a plain forward (``model.generate`` derives them from
the attention mask, a plain ``model(...)`` call does not), or padded rows would see shifted
positions and their logits would depend on the batch they landed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..batching import build_batch, forward, logits_to_keep
from ..generation import length_order, run_with_backoff
from ..hooks import Intervention, apply
from ..models.loaded import LoadedModel


def forward_padded(lm: LoadedModel, token_lists: Sequence[Sequence[int]], keep: int = 0) -> Tensor:
    """Logits of left-padded ``token_lists`` (float32), with correct positions.

    ``keep > 0`` unembeds only the last ``keep`` columns (``logits_to_keep``): with a 150k vocabulary
    the unembedding is a quarter of a 0.5B model's compute, and multiple choice needs one column.
    Returns ``(batch, keep or seq, vocab)``.
    """
    kwargs = logits_to_keep(lm.model, keep) if keep > 0 else {}
    batch = build_batch(lm, token_lists, keep=keep, share_prefix=keep > 0)
    logits = forward(lm, batch, **kwargs).logits
    return (logits[:, -keep:] if keep > 0 else logits).float()


def map_batches(
    lm: LoadedModel,
    token_lists: Sequence[Sequence[int]],
    fn: Callable[[list[int], Tensor], list[Any]],
    *,
    keep: int | Callable[[list[int]], int] = 0,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 8,
    progress: Any = None,
) -> list[Any]:
    """Run length-sorted batches with ``interventions`` installed; ``fn(indices, logits)`` returns one item per row.

    Results come back in input order. Batches halve on out-of-memory.
    """
    results: list[Any] = [None] * len(token_lists)
    order = length_order([len(t) for t in token_lists])

    def run_batch(indices: list[int]) -> list[Any]:
        logits = forward_padded(lm, [token_lists[i] for i in indices], keep(indices) if callable(keep) else keep)
        return fn(indices, logits)

    with apply(lm, interventions), torch.inference_mode():
        for indices, items in run_with_backoff(order, batch_size, run_batch, what="forward batch", progress=progress):
            for index, item in zip(indices, items):
                results[index] = item
    return results


def last_logprobs(
    lm: LoadedModel,
    token_lists: Sequence[Sequence[int]],
    *,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 8,
    progress: Any = None,
) -> Tensor:
    """Next-token log-probabilities at the last position of each sequence, shape ``(n, vocab)``, float32 CPU."""
    rows = map_batches(
        lm,
        token_lists,
        lambda _idx, logits: list(torch.log_softmax(logits[:, -1, :], dim=-1).cpu()),
        keep=1,
        interventions=interventions,
        batch_size=batch_size,
        progress=progress,
    )
    return torch.stack(rows) if rows else torch.empty(0, lm.vocab_size)


def continuation_logprobs(
    lm: LoadedModel,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 8,
    progress: Any = None,
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation) pair of token lists."""
    sequences = [list(c) + list(k) for c, k in zip(contexts, continuations)]
    lengths = [len(k) for k in continuations]

    def score(indices: list[int], logits: Tensor) -> list[float]:
        logprobs = torch.log_softmax(logits, dim=-1)
        out = []
        for row, index in enumerate(indices):
            n = lengths[index]
            targets = torch.tensor(sequences[index][-n:], device=logits.device)
            # Tokens at -n..-1 are predicted by the positions just before them.
            predicted = logprobs[row, -n - 1:-1, :]
            out.append(float(predicted.gather(-1, targets.unsqueeze(-1)).sum()))
        return out

    # The last max(len)+1 columns hold every scored position of every row in the batch.
    keep = lambda indices: max(lengths[i] for i in indices) + 1  # noqa: E731
    return map_batches(lm, sequences, score, keep=keep, interventions=interventions, batch_size=batch_size, progress=progress)
