"""Refusal scores at the first generated position: log-odds of the model's refusal tokens, and KL.

Arditi et al. (2024, §2.3, App. C): ``refusal_score = log p(refusal) - log(1 - p(refusal))`` where
``p(refusal)`` sums the next-token probabilities of the refusal tokens after the prompt. These need
one forward pass (no generation), which makes scoring many candidate directions affordable.
"""

from __future__ import annotations

from collections.abc import Sequence

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
