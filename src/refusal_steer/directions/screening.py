"""First-order (attribution-patching) estimate of every candidate's bypass score in one backward pass.

Ablating a unit direction r at every residual write w changes the refusal score by approximately
``-sum_w (w . r)(g_w . r)``, where g_w is the gradient of the score with respect to the residual stream
right after w is added (Nanda 2023, "attribution patching"; Syed et al. 2023). One forward and backward
pass over the validation prompts gives g_w for all writes, so all candidates are ranked at the cost of
about three forward passes; only the best-ranked ones then get the exact (one forward each) score.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..hooks import HookCall, HookPoint, Site, apply
from ..interventions import residual_writes
from ..batching import build_batch, forward, logits_to_keep
from ..generation import encode_prompts
from ..models import LoadedModel
from .scores import refusal_log_odds


@dataclass
class _GradCapture:
    """Keeps every residual write and its gradient; the embedding output becomes the graph's leaf."""

    capture_points: tuple[HookPoint, ...]
    writes: list[Tensor] = field(default_factory=list)
    kind = "grad_capture"
    positions = "all"

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return self.capture_points

    def validate(self, lm: LoadedModel) -> None:
        pass

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        if call.point.site is Site.RESID_PRE:
            if call.point.layer != 0:
                return x
            x = x.detach().requires_grad_(True)
        else:
            x.retain_grad()
        self.writes.append(x)
        return x


@contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Turn off gradients of every model parameter for the block (only activations or a steering vector get them)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def estimate_ablation_effects(
    lm: LoadedModel,
    prompts: Sequence[str],
    refusal_token_ids: Sequence[int],
    directions: Tensor,
    *,
    batch_size: int = 8,
    system: str | None = None,
    progress: bool = False,
) -> Tensor:
    """Estimated change in the mean refusal score when each row of ``directions`` is ablated everywhere.

    Args:
        directions: ``(n_candidates, d_model)``; rows are normalised here.

    Returns:
        ``(n_candidates,)`` float32: negative values mean ablation lowers refusal.
    """
    units = directions.float() / directions.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    encoded = encode_prompts(lm, prompts, system=system)
    extra = logits_to_keep(lm.model, 1)
    points = tuple(p for p in residual_writes(lm) if p.site is not Site.RESID_PRE or p.layer == 0)
    total = torch.zeros(units.shape[0], dtype=torch.float64)
    with frozen_parameters(lm.model):
        batches = range(0, len(encoded), batch_size)
        for start in tqdm(batches, desc="screening candidates (forward+backward)", unit="batch", disable=not progress):
            capture = _GradCapture(points)
            with torch.enable_grad(), apply(lm, [capture]):
                # The shared template prefix runs once with its graph kept: its cache is repeated over
                # the batch, so its writes receive the gradient summed over rows, which is what the sum
                # over prompts below needs.
                batch = build_batch(lm, encoded[start : start + batch_size], grad=True)
                logits = forward(lm, batch, **extra).logits[:, -1, :]
                scores = refusal_log_odds_differentiable(torch.log_softmax(logits, dim=-1), refusal_token_ids)
                scores.sum().backward()
            suffix_mask = batch.attention_mask[:, batch.prefix_length:]
            for write in capture.writes:
                if write.grad is None:
                    continue
                r = units.to(device=write.device, dtype=write.dtype)
                # Prefix writes have one row and no padding; the batch's writes are masked.
                in_prefix = write.shape[0] != suffix_mask.shape[0]  # sharing needs >= 2 rows, the prefix has 1
                mask = torch.ones_like(write[..., :1]) if in_prefix else suffix_mask.unsqueeze(-1).to(write.dtype)
                proj_x = (write.detach() * mask) @ r.T  # (batch, seq, n_candidates)
                proj_g = write.grad @ r.T
                total -= (proj_x * proj_g).sum(dim=(0, 1)).double().cpu()
    return (total / len(encoded)).float()


def refusal_log_odds_differentiable(logprobs: Tensor, refusal_token_ids: Sequence[int]) -> Tensor:
    """Same as :func:`refusal_log_odds` but keeps the autograd graph (float32)."""
    ids = torch.as_tensor(list(refusal_token_ids), dtype=torch.long, device=logprobs.device)
    p = logprobs.exp()[:, ids].sum(dim=-1).clamp(1e-8, 1 - 1e-8)
    return p.log() - torch.log1p(-p)


__all__ = ["estimate_ablation_effects", "refusal_log_odds", "refusal_log_odds_differentiable"]
