"""Linear probes for refusal: logistic regression on dense residuals vs on a few SAE latents (Yeo et al. 2025, §5).

Yeo et al. train linear probes to tell harmful from harmless prompts and test them out of distribution, on
jailbreak-wrapped prompts labelled by whether the model refused: a probe on a handful of refusal latents
generalises better than one on the dense residual. This module holds the method; the run that reads attack
transcripts and judges them is :mod:`refusal_steer.runs.probes`.

- :func:`fit_probe`: L2-regularised logistic regression fitted with LBFGS (torch, float64), on inputs standardised
  with the training set's mean and standard deviation; a :class:`LogisticProbe` predicts probabilities and labels;
- :func:`residual_features`: ``resid_pre.L`` at the last prompt token (the end of the assistant header, where the
  refusal direction is read: Arditi et al. 2024, §2) for every requested layer, one forward pass per batch;
- :func:`latent_features`: chosen SAE latents per prompt, reduced over the prompt's tokens
  (:func:`~refusal_steer.features.scores.prompt_activations`);
- :func:`random_latents`: the control set, as many random latents from the same SAEs (seeded);
- :func:`relative_drop`: ``1 - wrapped / plain``, the mechanism measure of Yeo et al. §5.

Example:
    >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.0]]); y = torch.tensor([False, False, True, True])
    >>> fit_probe(x, y).predict(torch.tensor([[0.5], [3.5]])).tolist()
    [False, True]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .batching import record_batch
from .errors import ConfigError, ShapeMismatchError
from .features.featureset import FeatureSet, LatentRef
from .features.scores import prompt_activations
from .generation import encode_prompts, length_order
from .hooks import HookPoint, Site
from .models.loaded import LoadedModel
from .sae.base import Sae

DEFAULT_L2 = 1e-2
"""L2 strength on the mean log-loss (about scikit-learn's C = 1 / (l2 * n): C ~ 0.4 at n = 256)."""


@dataclass(frozen=True)
class LogisticProbe:
    """A fitted logistic-regression probe: ``sigmoid(((x - mean) / std) @ weight + bias)``.

    Attributes:
        weight: ``(d,)`` float64, on standardised inputs.
        bias: the intercept (not regularised).
        mean, std: ``(d,)`` training statistics used to standardise inputs (std floored at 1e-6).
        l2: the L2 strength it was fitted with.
        n_train: training items.
        train_loss: the final regularised mean log-loss.
    """

    weight: Tensor
    bias: float
    mean: Tensor
    std: Tensor
    l2: float
    n_train: int
    train_loss: float

    def logits(self, x: Tensor) -> Tensor:
        """``(n,)`` float64 log-odds of the positive class for ``(n, d)`` inputs."""
        if x.ndim != 2 or x.shape[1] != self.weight.shape[0]:
            raise ShapeMismatchError(f"probe expects (n, {self.weight.shape[0]}) inputs, got {tuple(x.shape)}")
        z = (x.detach().to(torch.float64).cpu() - self.mean) / self.std
        return z @ self.weight + self.bias

    def predict_proba(self, x: Tensor) -> Tensor:
        """``(n,)`` probabilities of the positive class."""
        return torch.sigmoid(self.logits(x))

    def predict(self, x: Tensor) -> Tensor:
        """``(n,)`` bool: probability >= 0.5."""
        return self.logits(x) >= 0


def fit_probe(x: Tensor, y: Tensor | Sequence[bool], *, l2: float = DEFAULT_L2, max_iter: int = 500) -> LogisticProbe:
    """Fit an L2-regularised logistic regression with LBFGS on standardised ``x``.

    The loss is the mean binary log-loss plus ``l2 / 2 * ||weight||^2`` (the bias is not penalised), minimised in
    float64 by :class:`torch.optim.LBFGS` with a strong-Wolfe line search. The L2 term keeps the optimum finite on
    separable data (a dense residual of width 896 and a few hundred prompts is nearly always separable).

    Args:
        x: ``(n, d)`` inputs.
        y: ``(n,)`` labels (bool or 0/1).
        l2: L2 strength (> 0).
        max_iter: LBFGS iterations at most.

    Raises:
        ConfigError: no items, shapes that disagree, one class only, or ``l2 <= 0``.

    Example:
        >>> probe = fit_probe(torch.tensor([[-1.0], [1.0]]), [False, True])
        >>> probe.predict_proba(torch.tensor([[2.0]])).item() > 0.5
        True
    """
    labels = torch.as_tensor(y).reshape(-1).to(torch.float64)
    if x.ndim != 2 or x.shape[0] != labels.numel():
        raise ConfigError(f"a probe needs (n, d) inputs and n labels, got {tuple(x.shape)} and {labels.numel()}")
    if x.shape[0] == 0:
        raise ConfigError("no training items for the probe", fix="use more train prompts (--n-train)")
    if not 0 < float(labels.mean()) < 1:
        raise ConfigError("the probe's training labels hold one class only", fix="train on both harmful and harmless prompts")
    if l2 <= 0:
        raise ConfigError(f"l2={l2} must be > 0", fix="use a small positive value such as 1e-2")
    data = x.detach().to(torch.float64).cpu()
    mean, std = data.mean(0), data.std(0, unbiased=False).clamp_min(1e-6)
    z = (data - mean) / std
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def loss_fn() -> Tensor:
        return F.binary_cross_entropy_with_logits(z @ weight + bias, labels) + 0.5 * l2 * weight.pow(2).sum()

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        final = float(loss_fn())
    return LogisticProbe(weight=weight.detach().clone(), bias=float(bias.detach()), mean=mean, std=std, l2=l2, n_train=int(data.shape[0]),
                         train_loss=final)


def residual_features(lm: LoadedModel, prompts: Sequence[Any], layers: Sequence[int], *, batch_size: int = 8, system: str | None = None,
                      progress: bool = False) -> dict[int, Tensor]:
    """``resid_pre.L`` at each prompt's last token for every layer in ``layers``: ``{layer: (n, d_model)}`` float32.

    Prompts are strings or message lists, chat-formatted with the generation prompt, so the last token is the end
    of the assistant header. The forward pass stops after the deepest requested layer.
    """
    from tqdm.auto import tqdm

    bad = [layer for layer in layers if not 0 <= layer < lm.n_layers]
    if bad or not layers:
        raise ConfigError(f"layers {bad or list(layers)} are not in 0..{lm.n_layers - 1}", fix=f"pick layers between 0 and {lm.n_layers - 1}")
    points = [HookPoint(Site.RESID_PRE, layer) for layer in layers]
    tokens = encode_prompts(lm, prompts, system=system)
    out = {layer: torch.zeros(len(tokens), lm.d_model) for layer in layers}
    order = length_order([len(t) for t in tokens])
    for start in tqdm(range(0, len(order), batch_size), desc="residuals", unit="batch", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        acts = record_batch(lm, [tokens[i] for i in rows], points, keep=1)
        for layer, point in zip(layers, points):
            out[layer][rows] = acts[point][:, -1, :].float().cpu()
    return out


def latent_features(lm: LoadedModel, features: FeatureSet, saes: Mapping[str, Sae], latent_sets: Mapping[str, Sequence[LatentRef]],
                    prompts: Sequence[Any], *, reduce: str = "max", batch_size: int = 8, system: str | None = None,
                    progress: bool = False) -> dict[str, Tensor]:
    """For each named latent set, ``(n, len(set))`` activations per prompt, in the set's order (one pass for all sets).

    ``reduce="max"`` takes each latent's largest activation over the prompt's tokens after the chat template's fixed
    prefix (``features.skip_tokens``), the reduction latent discovery scored them by; ``"last"`` takes the last
    prompt token.
    """
    names = [name for name in features.saes if any(r.sae == name for refs in latent_sets.values() for r in refs)]
    unknown = sorted({r.sae for refs in latent_sets.values() for r in refs} - set(features.saes))
    if unknown:
        raise ConfigError(f"latents name SAEs {unknown} that features.json does not list")
    acts = prompt_activations(lm, {n: saes[n] for n in names}, {n: features.point(n) for n in names}, prompts,
                              skip_tokens=features.skip_tokens, reduce=reduce, batch_size=batch_size, system=system, progress=progress)
    out = {}
    for key, refs in latent_sets.items():
        columns = [acts[r.sae][:, r.index] for r in refs]
        out[key] = torch.stack(columns, dim=1) if columns else torch.zeros(len(prompts), 0)
    return out


def random_latents(features: FeatureSet, latents: Sequence[LatentRef], *, seed: int = 0) -> list[LatentRef]:
    """As many random latents per SAE as ``latents`` holds there, never one of ``latents`` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    taken = {r.key() for r in latents}
    out = []
    for name, count in Counter(r.sae for r in latents).items():
        d_sae = int(features.saes[name]["d_sae"])
        pool = torch.tensor([i for i in range(d_sae) if (name, i) not in taken])
        if pool.numel() < count:
            raise ConfigError(f"SAE {name} has {d_sae} latents: too few for a random control of {count}")
        chosen = pool[torch.randperm(pool.numel(), generator=generator)[:count]]
        out.extend(LatentRef(name, int(i)) for i in chosen.tolist())
    return out


def relative_drop(wrapped: Tensor, plain: Tensor) -> Tensor:
    """``1 - wrapped / plain`` per item; ``nan`` where ``plain <= 0`` (no activation to drop from).

    Example:
        >>> relative_drop(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([4.0, 2.0, 0.0])).tolist()[:2]
        [0.75, -0.5]
    """
    w, p = wrapped.to(torch.float64), plain.to(torch.float64)
    return torch.where(p > 0, 1 - w / p.clamp_min(1e-12), torch.full_like(p, float("nan")))


__all__ = ["DEFAULT_L2", "LogisticProbe", "fit_probe", "latent_features", "random_latents", "relative_drop", "residual_features"]
