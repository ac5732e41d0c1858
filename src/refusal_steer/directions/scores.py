"""Refusal scores at the first generated position: log-odds of the model's refusal tokens, and KL.

Arditi et al. (2024, §2.3, App. C): ``refusal_score = log p(refusal) - log(1 - p(refusal))`` where
``p(refusal)`` sums the next-token probabilities of the refusal tokens after the prompt. These need
one forward pass (no generation), which makes scoring many candidate directions affordable.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor

from ..hooks import Intervention, apply, prompt_boundary
from ..models import LoadedModel, format_chat

_EPS = 1e-8


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def last_token_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 16,
    system: str | None = None,
) -> Tensor:
    """Log-probabilities ``(n, vocab)`` of the first generated token after each chat-formatted prompt."""
    tokenizer = lm.tokenizer
    tokenizer.padding_side = "left"
    texts = [format_chat(tokenizer, p, system=system) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: Tensor | None = None
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(lm.model) else {}
    with torch.no_grad(), apply(lm, list(interventions)):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            inputs = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
            with prompt_boundary(lm, inputs["input_ids"].shape[1]):
                logits = lm.model(**inputs, use_cache=False, **extra).logits[:, -1, :]
            # float32 at least; float64 models keep float64 (finite-difference checks need it).
            logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).cpu()
            if out is None:
                out = torch.empty(len(texts), logprobs.shape[1], dtype=logprobs.dtype)
            out[idx] = logprobs
    assert out is not None
    return out


def refusal_log_odds(logprobs: Tensor, refusal_token_ids: Sequence[int]) -> Tensor:
    """Per-prompt ``log p - log(1 - p)`` where ``p`` is the total probability of the refusal tokens."""
    ids = torch.as_tensor(list(refusal_token_ids), dtype=torch.long)
    p = logprobs.double().exp()[:, ids].sum(dim=-1).clamp(_EPS, 1 - _EPS)
    return (p.log() - torch.log1p(-p)).to(logprobs.dtype)


def kl_divergence(base_logprobs: Tensor, steered_logprobs: Tensor) -> Tensor:
    """Per-prompt KL(base || steered) between next-token distributions (nats)."""
    base = base_logprobs.double()
    return (base.exp() * (base - steered_logprobs.double())).sum(dim=-1).to(base_logprobs.dtype)
