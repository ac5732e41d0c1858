"""Refusal scores at the first generated position: log-odds of the model's refusal tokens, and KL.

Arditi et al. (2024, §2.3, App. C): ``refusal_score = log p(refusal) - log(1 - p(refusal))`` where
``p(refusal)`` sums the next-token probabilities of the refusal tokens after the prompt. These need
one forward pass (no generation), which makes scoring many candidate directions affordable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..hooks import Intervention
from ..models import LoadedModel
from ..scoring import next_token_logprobs

_EPS = 1e-8


def last_token_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 16,
    system: str | None = None,
) -> Tensor:
    """Log-probabilities ``(n, vocab)`` of the first generated token after each chat-formatted prompt."""
    return next_token_logprobs(lm, prompts, interventions, batch_size=batch_size, system=system)


def refusal_log_odds(logprobs: Tensor, refusal_token_ids: Sequence[int]) -> Tensor:
    """Per-prompt ``log p - log(1 - p)`` where ``p`` is the total probability of the refusal tokens."""
    ids = torch.as_tensor(list(refusal_token_ids), dtype=torch.long)
    p = logprobs.double().exp()[:, ids].sum(dim=-1).clamp(_EPS, 1 - _EPS)
    return (p.log() - torch.log1p(-p)).to(logprobs.dtype)


def kl_divergence(base_logprobs: Tensor, steered_logprobs: Tensor) -> Tensor:
    """Per-prompt KL(base || steered) between next-token distributions (nats)."""
    base = base_logprobs.double()
    return (base.exp() * (base - steered_logprobs.double())).sum(dim=-1).to(base_logprobs.dtype)


@dataclass(frozen=True)
class KlCheck:
    """Mean KL over ``n`` prompts, or a proven lower bound on it when the check stopped early."""

    kl: float
    """The mean when every prompt was measured; otherwise (sum over the measured prompts) / ``n``, a lower bound."""
    n: int
    measured: tuple[int, ...] = ()
    """Indices of the prompts measured, in the order they were measured."""
    values: tuple[float, ...] = ()
    """Their per-prompt KL, in the same order."""

    @property
    def n_measured(self) -> int:
        return len(self.measured)

    @property
    def complete(self) -> bool:
        return self.n_measured == self.n


def kl_at_most(
    lm: LoadedModel,
    prompts: Sequence[str],
    base_logprobs: Tensor,
    interventions: Sequence[Intervention],
    threshold: float | None,
    *,
    order: Sequence[int] | None = None,
    batch_size: int = 16,
    system: str | None = None,
) -> KlCheck:
    """Mean KL(base || steered) over ``prompts``, stopping as soon as the prompts measured prove it is >= ``threshold``.

    KL is non-negative per prompt, so after any batch the partial sum divided by ``len(prompts)``
    bounds the mean from below; once that bound reaches the threshold the candidate fails the filter
    whatever the remaining prompts give, and their forward passes are skipped. Candidates that pass
    are always measured on every prompt, so what is selected is exactly what a full pass would select.
    ``threshold=None`` measures everything. ``base_logprobs`` are the unsteered log-probabilities of
    ``prompts`` in the same order; ``order`` (a permutation of their indices) says which to measure
    first: the bound is valid in any order, and reaches the threshold soonest when the prompts that
    move most come first (:class:`KlFilter`).
    """
    n = len(prompts)
    order = list(range(n)) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n})")
    total = 0.0
    measured: list[int] = []
    values: list[float] = []
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        steered = last_token_logprobs(lm, [prompts[i] for i in chunk], interventions, batch_size=batch_size, system=system)
        per_prompt = kl_divergence(base_logprobs[chunk], steered).double()
        measured += chunk
        values += per_prompt.tolist()
        total += per_prompt.sum().item()
        if threshold is not None and len(measured) < n and total / n >= threshold:
            break
    return KlCheck(kl=total / n if n else 0.0, n=n, measured=tuple(measured), values=tuple(values))


class KlFilter:
    """Selection's KL filter on fixed harmless prompts: :func:`kl_at_most` for each candidate, measuring first the
    prompts that moved most under the candidates checked before.

    A few prompts carry most of the KL (on the default model, "Create/Design ..." instructions whose first
    token flips), and they tend to be the same for every candidate, so putting them first lets a failing
    candidate be proven failed after one batch instead of several. The order changes which forward passes
    are skipped, never a decision or a complete KL value.
    """

    def __init__(self, lm: LoadedModel, prompts: Sequence[str], base_logprobs: Tensor, threshold: float, *,
                 early_exit: bool = True, batch_size: int = 16, system: str | None = None) -> None:
        self.lm, self.prompts, self.base_logprobs, self.threshold = lm, list(prompts), base_logprobs, threshold
        # At least two batches, so that a failing candidate can be stopped after the first (the demo's 32 KL prompts
        # at its batch size 32 would otherwise always be measured whole).
        self.early_exit, self.batch_size, self.system = early_exit, min(batch_size, max(1, math.ceil(len(self.prompts) / 2))), system
        self._moved = torch.zeros(len(self.prompts), dtype=torch.float64)  # summed KL per prompt over checks so far

    def __call__(self, interventions: Sequence[Intervention]) -> KlCheck:
        """KL of one candidate's interventions: complete if below the threshold, else possibly a proven lower bound."""
        order = torch.argsort(-self._moved, stable=True).tolist()
        check = kl_at_most(self.lm, self.prompts, self.base_logprobs, interventions, self.threshold if self.early_exit else None,
                           order=order, batch_size=self.batch_size, system=self.system)
        for index, value in zip(check.measured, check.values):
            self._moved[index] += value
        return check

    def passes(self, check: KlCheck) -> bool:
        """Whether a check's KL is finite and below the threshold (an early-stopped check never is)."""
        return check.complete and math.isfinite(check.kl) and check.kl < self.threshold
