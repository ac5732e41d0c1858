"""Scoring SAE latents for refusal without gradients: cosine to the refusal direction and activation contrast.

- :func:`cosine_scores`: each latent's decoder row against the refusal direction (Yeo et al. 2025's
  candidate pool takes the top 10 per layer; their *CosSim* baseline the global top 20);
- :func:`max_activation_diff`: mean over harmful prompts of each prompt's max activation minus the same on
  harmless prompts (their *ActDiff* baseline), over the tokens after the chat template's fixed prefix;
- :func:`max_activations`: each latent's largest activation on a prompt set (Kapros 2025 scale the added
  decoder row by it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..batching import build_batch, forward
from ..errors import ConfigError
from ..generation import encode_prompts, length_order
from ..hooks import HookPoint, Recorder, StopForward, apply
from ..models.loaded import LoadedModel
from ..sae.base import Sae


def cosine_scores(saes: Mapping[str, Sae], direction: Tensor) -> dict[str, Tensor]:
    """Cosine of every latent's decoder row with ``direction``, per SAE name: ``{name: (d_sae,)}`` float32."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    out = {}
    for name, sae in saes.items():
        rows = sae.W_dec.detach().float().cpu()
        out[name] = rows @ unit / rows.norm(dim=1).clamp_min(1e-12)
    return out


def prompt_mask(attention_mask: Tensor, skip_tokens: int) -> Tensor:
    """``(batch, seq)`` bool: real (unpadded) tokens at prompt index >= ``skip_tokens`` of left-padded rows."""
    index = attention_mask.long().cumsum(-1) - 1
    return attention_mask.bool() & (index >= skip_tokens)


def _record(lm: LoadedModel, points: Mapping[str, HookPoint], token_lists: Sequence[Sequence[int]],
            skip_tokens: int) -> tuple[dict[HookPoint, Tensor], Tensor]:
    """The activations of one batch at every point (one forward, stopped after the deepest) and the token mask."""
    recorder = Recorder(tuple(dict.fromkeys(points.values())), stop_after_last=True)
    batch = build_batch(lm, token_lists, share_prefix=False)
    with torch.no_grad(), apply(lm, [recorder]):
        try:
            forward(lm, batch)
        except StopForward:
            pass
    return {p: recorder[p] for p in dict.fromkeys(points.values())}, prompt_mask(batch.attention_mask.cpu(), skip_tokens)


def latent_activations(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], token_lists: Sequence[Sequence[int]],
                       skip_tokens: int) -> tuple[dict[str, Tensor], Tensor]:
    """Latents of one batch at every SAE's point (``{name: (batch, seq, d_sae)}``) and the token mask (``(batch, seq)``)."""
    acts, mask = _record(lm, points, token_lists, skip_tokens)
    with torch.no_grad():
        latents = {name: sae.encode(acts[points[name]].to(sae.device)).float().cpu() for name, sae in saes.items()}
    return latents, mask


def _per_prompt(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], prompts: Sequence[str], skip_tokens: int,
                batch_size: int, reduce: str, system: str | None = None, progress: bool = False) -> dict[str, Tensor]:
    """Per-prompt reduction (``max`` or ``mean`` over the scored tokens, or the ``last`` prompt token) of every latent: ``{name: (n, d_sae)}``."""
    from tqdm.auto import tqdm

    tokens = encode_prompts(lm, prompts, system=system)
    order = length_order([len(t) for t in tokens])
    out = {name: torch.zeros(len(prompts), sae.cfg.d_sae) for name, sae in saes.items()}
    for start in tqdm(range(0, len(order), batch_size), desc="latent activations", unit="batch", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        acts, mask = _record(lm, points, [tokens[i] for i in rows], skip_tokens)
        keep = mask.unsqueeze(-1)
        # One SAE at a time, reduced at once: the peak is one SAE's (batch, seq, d_sae), not every SAE's.
        for name, sae in saes.items():
            x = acts[points[name]]
            with torch.no_grad():
                if reduce == "last":  # rows are left-padded: the last column is every prompt's last token; encode only it
                    out[name][rows] = sae.encode(x[:, -1:, :].to(sae.device)).float().cpu()[:, 0, :]
                    continue
                z = sae.encode(x.to(sae.device)).float().cpu()
            if reduce == "max":
                value = z.masked_fill_(~keep, -torch.inf).amax(1)
                value = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
            else:
                value = z.mul_(keep).sum(1) / keep.sum(1).clamp_min(1)
            out[name][rows] = value
            del z
    return out


def max_activations(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], prompts: Sequence[str], *,
                    skip_tokens: int, batch_size: int = 8, system: str | None = None, progress: bool = False) -> dict[str, Tensor]:
    """Each prompt's max activation of every latent over its tokens after ``skip_tokens``: ``{name: (n, d_sae)}``."""
    return _per_prompt(lm, saes, points, prompts, skip_tokens, batch_size, "max", system, progress)


def prompt_activations(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], prompts: Sequence[object], *,
                       skip_tokens: int, reduce: str = "max", batch_size: int = 8, system: str | None = None,
                       progress: bool = False) -> dict[str, Tensor]:
    """One row per prompt of every latent: ``reduce`` is ``max`` (over the tokens after ``skip_tokens``, as
    :func:`max_activations`), ``mean`` (over the same tokens) or ``last`` (the last prompt token). Prompts may be
    strings or message lists. Returns ``{name: (n, d_sae)}``."""
    if reduce not in ("max", "mean", "last"):
        raise ConfigError(f"reduce must be max, mean or last, got {reduce!r}", fix="use --reduce max or --reduce last")
    return _per_prompt(lm, saes, points, prompts, skip_tokens, batch_size, reduce, system, progress)  # type: ignore[arg-type]


def max_activation_diff(harmful_max: Mapping[str, Tensor], harmless_max: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ActDiff: mean harmful per-prompt max minus mean harmless per-prompt max, per latent."""
    return {name: harmful_max[name].mean(0) - harmless_max[name].mean(0) for name in harmful_max}


def global_top(scores: Mapping[str, Tensor], k: int, *, pool: Mapping[str, Tensor] | None = None) -> list[tuple[str, int, float]]:
    """The ``k`` highest (SAE name, latent, score) over every SAE, optionally only among ``pool`` indices."""
    entries: list[tuple[str, int, float]] = []
    for name, values in scores.items():
        index = pool[name] if pool is not None else torch.arange(values.shape[-1])
        vals = values[index]
        keep = min(k, len(index))
        top = torch.topk(vals, keep)
        entries.extend((name, int(index[i]), float(v)) for v, i in zip(top.values, top.indices))
    entries.sort(key=lambda e: (-e[2], e[0], e[1]))
    return entries[:k]


def per_sae_top(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Indices of the ``k`` highest scores in each SAE (Yeo et al.'s per-layer cosine pool, k = 10)."""
    return {name: torch.topk(values, min(k, values.shape[-1])).indices for name, values in scores.items()}


__all__ = ["cosine_scores", "global_top", "latent_activations", "max_activation_diff", "max_activations", "per_sae_top", "prompt_activations",
           "prompt_mask"]
