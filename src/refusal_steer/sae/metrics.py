"""SAE quality metrics.

Reconstruction metrics on held-out activations are pure tensor functions (:func:`mse`, :func:`fvu`,
:func:`l0`, :func:`firing_frequencies`, :func:`dead_fraction`, :func:`dense_fraction`) plus a
streaming :func:`evaluate_sae` over batches. Metrics with the SAE spliced into the model
(cross-entropy loss recovered and KL, with and without the error term) are in :func:`spliced_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..interventions.positions import steered_mask
from .base import Sae
from .splice import SaeSplice

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel


# --------------------------------------------------------------------------- pure functions
def mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared error per element.

    Example:
        >>> float(mse(torch.zeros(2, 2), torch.ones(2, 2)))
        1.0
    """
    return (x.float() - x_hat.float()).pow(2).mean()


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained: ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over tokens ``(n, d)``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
        >>> float(fvu(x, torch.zeros(2, 2)))
        1.0
    """
    x = x.reshape(-1, x.shape[-1]).float()
    x_hat = x_hat.reshape(-1, x_hat.shape[-1]).float()
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def l0(latents: Tensor) -> Tensor:
    """Mean number of non-zero latents per token.

    Example:
        >>> float(l0(torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 3.0]])))
        1.5
    """
    return (latents != 0).sum(-1).float().mean()


def firing_frequencies(latents: Tensor) -> Tensor:
    """(d_sae,) fraction of tokens on which each latent is non-zero."""
    return (latents.reshape(-1, latents.shape[-1]) != 0).float().mean(0)


def dead_fraction(frequencies: Tensor) -> Tensor:
    """Fraction of latents that never fired (frequency exactly 0)."""
    return (frequencies == 0).float().mean()


def dense_fraction(frequencies: Tensor, threshold: float = 0.1) -> Tensor:
    """Fraction of latents firing on more than ``threshold`` of tokens (dense latents)."""
    return (frequencies > threshold).float().mean()


# --------------------------------------------------------------------------- streaming evaluation
@dataclass(frozen=True)
class SaeMetrics:
    """Reconstruction metrics of an SAE on held-out activations (``mse`` in raw activation units)."""

    n_tokens: int
    mse: float
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return asdict(self)


@torch.no_grad()
def evaluate_sae(sae: Sae, batches: Iterable[Tensor], *, dense_threshold: float = 0.1, max_tokens: int | None = None) -> SaeMetrics:
    """Stream ``(n, d_in)`` activation batches through ``sae`` and aggregate the metrics exactly.

    FVU is over the whole set (total variance around the global mean), not averaged per batch.

    Args:
        sae: the SAE.
        batches: raw activations, ``(n, d_in)`` or ``(..., d_in)`` each.
        dense_threshold: firing frequency above which a latent counts as dense.
        max_tokens: stop after this many tokens.

    Example:
        >>> from refusal_steer.sae import TopKConfig, build_sae
        >>> evaluate_sae(build_sae(TopKConfig(d_in=4, d_sae=8, k=2)), [torch.randn(16, 4)]).l0
        2.0
    """
    n = 0
    sum_x: Tensor | None = None
    sum_sq = 0.0
    err_sq = 0.0
    active_total = 0.0
    fire = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for batch in batches:
        x = batch.reshape(-1, batch.shape[-1]).to(sae.device)
        if max_tokens is not None:
            x = x[: max(0, max_tokens - n)]
        if x.shape[0] == 0:
            break
        out = sae(x)
        xf = x.double()
        sum_x = xf.sum(0) if sum_x is None else sum_x + xf.sum(0)
        sum_sq += float(xf.pow(2).sum())
        err_sq += float((xf - out.x_hat.double()).pow(2).sum())
        on = out.latents != 0
        active_total += float(on.sum())
        fire += on.sum(0).double().cpu()
        n += x.shape[0]
        if max_tokens is not None and n >= max_tokens:
            break
    if n == 0 or sum_x is None:
        from ..errors import EmptyDatasetError

        raise EmptyDatasetError("no activations to evaluate the SAE on", fix="pass a non-empty activations directory or iterator")
    total_var = sum_sq - float(sum_x.pow(2).sum()) / n
    freqs = fire / n
    return SaeMetrics(
        n_tokens=n,
        mse=err_sq / (n * sae.cfg.d_in),
        fvu=err_sq / total_var if total_var > 0 else math.nan,
        l0=active_total / n,
        dead_fraction=float(dead_fraction(freqs)),
        dense_fraction=float(dense_fraction(freqs, dense_threshold)),
    )


# --------------------------------------------------------------------------- spliced into the model
@dataclass(frozen=True)
class SplicedMetrics:
    """Next-token metrics with the SAE spliced in at its hook point.

    ``ce_recovered = (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean)``: 1 means the
    SAE loses nothing, 0 means it is as bad as zeroing the activation.
    """

    n_tokens: int
    ce_clean: float
    ce_spliced: float
    ce_spliced_with_error: float | None
    """None when the error-term pass was skipped (``with_error=False``)."""
    ce_zero_ablation: float
    ce_recovered: float
    kl_spliced: float
    kl_spliced_with_error: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return asdict(self)


@dataclass(frozen=True)
class _ZeroAblation:
    """Replace the activation at ``point`` by zeros (the floor of CE loss recovered)."""

    kind = "zero_ablation"
    positions = "all"

    point: Any
    skip_tokens: int = 0

    @property
    def points(self) -> tuple[Any, ...]:
        return (self.point,)

    def validate(self, lm: LoadedModel) -> None:
        self.point.validate(lm)

    def __call__(self, x: Tensor, call: Any) -> Tensor:
        if self.skip_tokens > 0:
            keep = ~steered_mask(call.positions, "all", skip_prompt=self.skip_tokens)  # the prefix and padding keep x
            return torch.where(keep.unsqueeze(-1), x, torch.zeros_like(x))
        return torch.zeros_like(x)


def _next_token_stats(logits: Tensor, input_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(per-position CE, log-probs, valid mask) for next-token prediction."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    valid = (mask[:, 1:] & mask[:, :-1]).bool()
    ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return ce, logp, valid


def final_hidden(lm: LoadedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """The decoder's output ``(batch, seq, d_model)`` after its final norm: what the unembedding reads.

    The model's own forward runs (so the project's hooks see the batch's positions) with ``logits_to_keep=1``, and
    the final norm's output is read by a hook: no ``(batch, seq, vocab)`` logits tensor is ever made, and
    :func:`unembed` turns chunks of the hidden states into logits.
    """
    from ..models.adapters import get_submodule

    captured: list[Tensor] = []
    norm = get_submodule(lm.model, lm.adapter.final_norm)
    handle = norm.register_forward_hook(lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
    try:
        lm.model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1]


def unembed(lm: LoadedModel, hidden: Tensor) -> Tensor:
    """Logits of ``hidden`` (``(..., d_model)`` from :func:`final_hidden`) exactly as the causal-LM head makes them
    (the output embedding, then Cohere's/Granite's logit scale and Gemma's final soft-capping where the model has them)."""
    logits = lm.model.get_output_embeddings()(hidden)
    scale = getattr(lm.model, "logit_scale", None)  # Cohere multiplies, Granite divides
    if isinstance(scale, (int, float)):
        logits = logits * scale
    divide = getattr(lm.model.config, "logits_scaling", None)
    if isinstance(divide, (int, float)) and divide not in (0, 1):
        logits = logits / divide
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _row_stats(lm: LoadedModel, hidden: Tensor, input_ids: Tensor, clean_hidden: Tensor | None = None,
               chunk: int = 64) -> tuple[Tensor, Tensor | None]:
    """Per-position CE ``(batch, seq - 1)`` and, given ``clean_hidden``, per-position KL(clean || this).

    Log-softmax, the gather and the sum over the vocabulary are per position, so computing them ``chunk``
    positions at a time gives the same values as on the whole batch while only ``(chunk, vocab)`` logits and
    log-probabilities exist at once (whole-batch logits are 1.2 GB at 8 x 256 tokens and a 150k vocabulary).
    """
    ces, kls = [], []
    width = hidden.shape[1] - 1
    for row in range(hidden.shape[0]):
        ce_row, kl_row = [], []
        for start in range(0, width, chunk):
            end = min(width, start + chunk)
            logp = torch.log_softmax(unembed(lm, hidden[row, start:end]).float(), dim=-1)
            target = input_ids[row, start + 1:end + 1]
            ce_row.append(-logp.gather(-1, target.unsqueeze(-1)).squeeze(-1))
            if clean_hidden is not None:
                logp0 = torch.log_softmax(unembed(lm, clean_hidden[row, start:end]).float(), dim=-1)
                kl_row.append((logp0.exp() * (logp0 - logp)).sum(-1))
            del logp
        ces.append(torch.cat(ce_row).unsqueeze(0))
        if clean_hidden is not None:
            kls.append(torch.cat(kl_row).unsqueeze(0))
    return torch.cat(ces), (torch.cat(kls) if clean_hidden is not None else None)


@torch.no_grad()
def spliced_metrics(
    lm: LoadedModel, sae: Sae, batches: Iterable[Mapping[str, Tensor]], point: Any | None = None, *, skip_tokens: int = 0,
    with_error: bool = True,
) -> SplicedMetrics:
    """CE loss recovered and KL to the clean model with ``sae`` spliced in, with and without the error term.

    Args:
        lm: the model.
        sae: the SAE (its ``cfg.point`` is used when ``point`` is None).
        batches: tokenized inputs, each a dict with ``input_ids``, ``attention_mask`` and optionally
            ``position_ids`` (pass them for left-padded batches).
        point: hook point (string or :class:`~refusal_steer.hooks.HookPoint`).
        skip_tokens: splice (and zero-ablate) only from each row's ``skip_tokens``-th real token on,
            and score only the predictions made there.
        with_error: also run the splice with the error term added back (a check that it reproduces the clean
            model: its KL is ~0); False saves one of the four forward passes per batch.

    Returns:
        Token-weighted means over all scored next-token positions.
    """
    from ..errors import ConfigError, EmptyDatasetError
    from ..hooks import HookPoint, apply

    where = point if point is not None else sae.cfg.point
    if where is None:
        raise ConfigError("the SAE records no hook point", fix="pass point='resid_pre.L' (or --point)")
    hp = HookPoint.parse(where)
    splice = SaeSplice(sae, hp, keep_error=False, skip_tokens=skip_tokens)
    splice_err = SaeSplice(sae, hp, keep_error=True, skip_tokens=skip_tokens)
    zero = _ZeroAblation(hp, skip_tokens)
    sums = dict(clean=0.0, spliced=0.0, err=0.0, zero=0.0, kl=0.0, kl_err=0.0)
    n = 0
    device = next(lm.model.parameters()).device
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        inputs["attention_mask"] = mask
        ids = inputs["input_ids"]
        # Only final hidden states are kept per pass (d_model wide, not vocab wide); logits and log-probabilities
        # exist for 64 positions at a time: the same sums as with whole-batch tensors, a fraction of the memory.
        clean_hidden = final_hidden(lm, inputs)
        ce0, _ = _row_stats(lm, clean_hidden, ids)
        valid = (mask[:, 1:] & mask[:, :-1]).bool()
        if skip_tokens > 0:
            from ..generation import position_ids

            valid = valid & (position_ids(mask)[:, :-1] >= skip_tokens)
        results = {}
        passes = (("spliced", splice), ("err", splice_err), ("zero", zero)) if with_error else (("spliced", splice), ("zero", zero))
        for name, iv in passes:
            with apply(lm, [iv]):
                hidden = final_hidden(lm, inputs)
            results[name] = _row_stats(lm, hidden, ids, clean_hidden if name != "zero" else None)
            del hidden
        del clean_hidden
        sums["clean"] += float(ce0[valid].sum())
        for name in results:
            sums[name] += float(results[name][0][valid].sum())
        sums["kl"] += float(results["spliced"][1][valid].sum())
        if with_error:
            sums["kl_err"] += float(results["err"][1][valid].sum())
        n += int(valid.sum())
    if n == 0:
        raise EmptyDatasetError("no next-token positions to evaluate", fix="pass non-empty texts")
    m = {k: v / n for k, v in sums.items()}
    denom = m["zero"] - m["clean"]
    return SplicedMetrics(
        n_tokens=n,
        ce_clean=m["clean"],
        ce_spliced=m["spliced"],
        ce_spliced_with_error=m["err"] if with_error else None,
        ce_zero_ablation=m["zero"],
        ce_recovered=(m["zero"] - m["spliced"]) / denom if abs(denom) > 1e-12 else math.nan,
        kl_spliced=m["kl"],
        kl_spliced_with_error=m["kl_err"] if with_error else None,
    )


__all__ = [
    "mse",
    "fvu",
    "l0",
    "firing_frequencies",
    "dead_fraction",
    "dense_fraction",
    "SaeMetrics",
    "evaluate_sae",
    "SplicedMetrics",
    "spliced_metrics",
]
