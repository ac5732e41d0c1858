"""Upstream harm latents and downstream refusal latents (Yeo et al. 2025, §4).

Run latent discovery once per harm category; the latents every category's global set shares are the
*refusal* latents, those particular to a category its *harm* latents. Clamping a category's harm latents to
zero on its own prompts and measuring how much the refusal latents' activation drops downstream (their
Gemma-2-2B figure: a relative drop of 0.45) tests whether harm recognition feeds refusal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..generation import encode_prompts
from ..hooks import HookPoint, Intervention, apply
from ..models.loaded import LoadedModel
from ..sae.base import Sae
from ..sae.latent_steers import LatentClamp
from .featureset import LatentRef
from .scores import latent_activations


def split_common_specific(category_sets: Mapping[str, Sequence[LatentRef]]) -> tuple[list[tuple[str, int]], dict[str, list[tuple[str, int]]]]:
    """The latents in every category's set (refusal) and, per category, those in its set only beyond them (harm)."""
    keys = {cat: [r.key() for r in refs] for cat, refs in category_sets.items()}
    common = set.intersection(*(set(v) for v in keys.values())) if keys else set()
    ordered_common = [k for k in next(iter(keys.values()), []) if k in common]
    specific = {cat: [k for k in v if k not in common] for cat, v in keys.items()}
    return ordered_common, specific


def _summed(latents: Mapping[str, torch.Tensor], mask: torch.Tensor, targets: Sequence[tuple[str, int]]) -> torch.Tensor:
    """Per prompt: the mean over scored tokens of the summed activation of ``targets``."""
    total = torch.zeros(mask.shape[0])
    m = mask.float()
    for sae, index in targets:
        total += (latents[sae][..., index] * m).sum(1) / m.sum(1).clamp_min(1)
    return total


def downstream_drop(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], prompts: Sequence[str],
                    clamp: Sequence[tuple[str, int]], measure: Sequence[tuple[str, int]], *, skip_tokens: int, batch_size: int = 8,
                    system: str | None = None) -> dict[str, torch.Tensor]:
    """Per prompt, the summed activation of ``measure`` latents clean and with ``clamp`` latents set to zero.

    Only ``measure`` latents at points after the earliest clamped point can change (a latent is encoded from the
    activation arriving at its point), so the others are dropped from ``measure``.

    Returns:
        ``{"clean": (n,), "clamped": (n,), "relative_drop": (n,)}`` with ``relative_drop = 1 - clamped / clean``
        (0 where a prompt's clean activation is 0), and ``"measured"``, the latents kept.
    """
    by_sae: dict[str, list[int]] = {}
    for sae, index in clamp:
        by_sae.setdefault(sae, []).append(index)
    steer: list[Intervention] = [LatentClamp(saes[s], points[s], latents=tuple(ix), mode="set", value=0.0, skip_tokens=skip_tokens)
                                 for s, ix in by_sae.items()]
    first = min((points[s].layer for s in by_sae), default=0)
    kept = [(s, i) for s, i in measure if points[s].layer > first]
    names = sorted({s for s, _ in kept})
    tokens = encode_prompts(lm, prompts, system=system)
    clean, clamped = [], []
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size]
        acts, mask = latent_activations(lm, {n: saes[n] for n in names}, {n: points[n] for n in names}, chunk, skip_tokens)
        clean.append(_summed(acts, mask, kept))
        with apply(lm, steer):
            acts, mask = latent_activations(lm, {n: saes[n] for n in names}, {n: points[n] for n in names}, chunk, skip_tokens)
        clamped.append(_summed(acts, mask, kept))
    c, k = torch.cat(clean) if clean else torch.zeros(0), torch.cat(clamped) if clamped else torch.zeros(0)
    drop = torch.where(c > 0, 1 - k / c.clamp_min(1e-12), torch.zeros_like(c))
    return {"clean": c, "clamped": k, "relative_drop": drop, "measured": kept}


def firing_matched(firing: Mapping[str, torch.Tensor], targets: Sequence[tuple[str, int]], exclude: Sequence[tuple[str, int]],
                   generator: torch.Generator, *, nearest: int = 20) -> list[tuple[str, int]]:
    """For each target latent, a random latent of the same SAE that fires about as often (the control of a clamp).

    ``firing[sae]`` is each latent's firing rate on the prompts (share with a nonzero max activation). A latent drawn
    uniformly from an SAE almost never fires, so clamping it changes nothing and makes a control that cannot fail;
    drawing among the ``nearest`` latents by firing rate (none of ``exclude``, none drawn twice) matches what the
    clamp removes in frequency, not in meaning.
    """
    taken = set(map(tuple, exclude)) | set(map(tuple, targets))
    out = []
    for sae, index in targets:
        rate = firing[sae]
        order = torch.argsort((rate - rate[index]).abs(), stable=True)
        candidates = [int(j) for j in order if (sae, int(j)) not in taken][:nearest]
        pick = candidates[int(torch.randint(0, len(candidates), (1,), generator=generator))]
        taken.add((sae, pick))
        out.append((sae, pick))
    return out


def bootstrap_mean_ci(values: torch.Tensor, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and its 95% percentile-bootstrap interval."""
    if values.numel() == 0:
        return float("nan"), float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, values.numel(), (n_resamples, values.numel()), generator=g)
    means = values[idx].mean(1)
    return float(values.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))


__all__ = ["bootstrap_mean_ci", "downstream_drop", "firing_matched", "split_common_specific"]
