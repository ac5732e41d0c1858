"""Single-latent refusal candidates for hardening refusal (O'Brien et al. 2024).

O'Brien et al. (2024) harden a model's refusal by clamping *one* SAE latent to a constant; they find the
candidates by running the model's own refusals through the SAE and keeping the latents active on the
refusal's tokens. :func:`refusal_latent_candidates` does that on any SAEs at any points:

- for each refusal (prompt tokens + the model's own refusing completion), it counts the completion tokens
  each latent fires on (activation above ``threshold``);
- it keeps the latents that fire on at least ``min_tokens`` completion tokens of at least ``min_share`` of
  the refusals;
- it ranks them by their mean activation over every refusal completion token, minus their mean over the
  tokens of harmless completions when those are given (a latent that fires on any answer is not a refusal
  latent).

The result converts to a :class:`~refusal_steer.features.featureset.FeatureSet`
(:meth:`RefusalLatentScan.feature_set`), so the steer is the existing clamp: ``clamp_steer(features,
features.ranked(k=1), mode="set", value=V)``, and a saved ``features.json`` steers with
``latents:FDIR:value=V`` (k defaults to 1 there: a single latent, as O'Brien et al.).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError, EmptyDatasetError, ShapeMismatchError
from ..generation import Completion, encode_prompts, length_order
from ..hooks import HookPoint
from ..models.loaded import LoadedModel
from ..sae.base import Sae
from .featureset import FeatureSet, LatentRef
from .scores import latent_activations

METHOD = "single-latent"


@dataclass(frozen=True)
class Conversation:
    """One prompt and its completion as token ids (the chat-formatted prompt, then the model's answer)."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(t) for t in self.prompt_ids))
        object.__setattr__(self, "completion_ids", tuple(int(t) for t in self.completion_ids))
        if not self.completion_ids:
            raise ConfigError("a conversation has no completion tokens to score", fix="drop empty completions before scanning")


def conversations_from_completions(lm: LoadedModel, completions: Sequence[Completion], *, system: str | None = None) -> list[Conversation]:
    """The prompt and answer tokens of :func:`~refusal_steer.generation.generate`'s completions (give the same ``system``).

    Raises:
        ShapeMismatchError: a prompt re-encodes to another length than it was generated from (another system prompt).
    """
    out = []
    for completion in completions:
        prompt_ids = encode_prompts(lm, [completion.prompt], system=system)[0]
        if len(prompt_ids) != completion.n_prompt_tokens:
            raise ShapeMismatchError(f"a prompt encodes to {len(prompt_ids)} tokens here but was generated from {completion.n_prompt_tokens}",
                                     fix="pass the system prompt the completions were generated with")
        out.append(Conversation(tuple(prompt_ids), completion.token_ids))
    return out


@dataclass(frozen=True)
class LatentCandidate:
    """One latent that fires on the refusals: where it is and how it was ranked.

    Attributes:
        sae, index: the SAE's name and the latent.
        score: ``refusal_mean - harmless_mean`` (``refusal_mean`` alone without harmless completions).
        share: share of refusals on which it fires on at least ``min_tokens`` completion tokens.
        mean_tokens: completion tokens it fires on per refusal, on average.
        refusal_mean: its mean activation over every refusal completion token (SAE units).
        harmless_mean, harmless_share: the same on the harmless completions (None without them).
    """

    sae: str
    index: int
    score: float
    share: float
    mean_tokens: float
    refusal_mean: float
    harmless_mean: float | None = None
    harmless_share: float | None = None

    def ref(self) -> LatentRef:
        return LatentRef(self.sae, self.index, self.score)


@dataclass(frozen=True, eq=False)
class RefusalLatentScan:
    """What :func:`refusal_latent_candidates` found: the ranked candidates and the per-refusal token counts."""

    candidates: tuple[LatentCandidate, ...]
    tokens_fired: dict[str, Tensor]
    """``{sae: (n_refusals, d_sae) int32}``: completion tokens each latent fires on, per refusal."""
    completion_tokens: Tensor
    """``(n_refusals,)``: completion tokens scored per refusal."""
    points: dict[str, HookPoint]
    min_tokens: int
    min_share: float
    threshold: float
    skip_tokens: int
    n_harmless: int = 0
    details: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def n_refusals(self) -> int:
        return int(self.completion_tokens.shape[0])

    def feature_set(self, sources: Mapping[str, str], *, model: str, k: int | None = None) -> FeatureSet:
        """The candidates as a :class:`FeatureSet` (``sources``: each SAE's folder or shipped name), ready for ``clamp_steer`` and ``latents:FDIR``.

        ``k`` keeps the top ``k`` (all by default); the set's default ``k`` for ``latents:FDIR`` is 1.
        """
        missing = sorted(set(self.points) - set(sources))
        if missing:
            raise ConfigError(f"no source given for SAE(s) {missing}", fix="pass each SAE's folder or shipped name in sources")
        kept = self.candidates if k is None else self.candidates[:k]
        details = {f"{c.sae}:{c.index}": {"share": c.share, "mean_tokens": c.mean_tokens, "refusal_mean": c.refusal_mean,
                                          **({} if c.harmless_mean is None else {"harmless_mean": c.harmless_mean,
                                                                                 "harmless_share": c.harmless_share or 0.0})}
                   for c in kept}
        saes = {name: {"source": sources[name], "point": str(point), "d_sae": int(self.tokens_fired[name].shape[1])}
                for name, point in self.points.items()}
        return FeatureSet(model=model, method=METHOD, saes=saes, skip_tokens=self.skip_tokens, sets={"selected": [c.ref() for c in kept]},
                          details=details, hyperparameters={"k": 1, "min_tokens": self.min_tokens, "min_share": self.min_share,
                                                            "threshold": self.threshold},
                          prompts={"n_refusals": self.n_refusals, "n_harmless": self.n_harmless})


@dataclass
class _Tally:
    fired: dict[str, Tensor]
    sums: dict[str, Tensor]
    tokens: Tensor


def _tally(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], conversations: Sequence[Conversation],
           skip_tokens: int, batch_size: int, threshold: float) -> _Tally:
    """Per conversation and latent, the completion tokens it fires on; per latent, its summed activation over them."""
    token_lists = [list(c.prompt_ids + c.completion_ids) for c in conversations]
    fired = {name: torch.zeros(len(conversations), sae.cfg.d_sae, dtype=torch.int32) for name, sae in saes.items()}
    sums = {name: torch.zeros(sae.cfg.d_sae, dtype=torch.float64) for name, sae in saes.items()}
    tokens = torch.zeros(len(conversations), dtype=torch.int64)
    order = length_order([len(t) for t in token_lists])
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        latents, mask = latent_activations(lm, saes, points, [token_lists[i] for i in rows], skip_tokens)
        width = mask.shape[1]
        completion = torch.zeros_like(mask)
        for row, i in enumerate(rows):  # left-padded: each row's completion is its last columns
            completion[row, width - len(conversations[i].completion_ids):] = True
        scored = mask & completion
        tokens[rows] = scored.sum(1)
        for name, z in latents.items():
            fired[name][rows] = ((z > threshold) & scored.unsqueeze(-1)).sum(1).to(torch.int32)
            sums[name] += (z * scored.unsqueeze(-1)).sum((0, 1)).double()
    return _Tally(fired, sums, tokens)


def refusal_latent_candidates(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint | str],
                              refusal_conversations: Sequence[Conversation], *, min_tokens: int = 2, min_share: float = 0.5,
                              skip_tokens: int = 0, batch_size: int = 8, threshold: float = 0.0,
                              harmless_conversations: Sequence[Conversation] | None = None) -> RefusalLatentScan:
    """O'Brien et al. (2024)'s single-latent candidates: latents firing on the model's own refusals, ranked.

    Args:
        lm: the model.
        saes: SAEs by name; ``points[name]`` is where each reads.
        points: each SAE's hook point.
        refusal_conversations: the model's refusals, prompt and completion tokens
            (:func:`conversations_from_completions` builds them from generated completions).
        min_tokens: a latent counts on a refusal when it fires on at least this many completion tokens.
        min_share: keep latents that count on at least this share of the refusals (0 < share <= 1).
        skip_tokens: tokens at the start of every sequence the SAEs never read (the chat template's fixed prefix).
        batch_size: conversations per forward pass.
        threshold: a latent fires on a token when its activation is above this (SAE units).
        harmless_conversations: completions to harmless prompts; their mean activation is subtracted from the score.

    Returns:
        A :class:`RefusalLatentScan` whose ``candidates`` are ranked by score, highest first.

    Example:
        >>> scan = refusal_latent_candidates(lm, {"l14": sae}, {"l14": "resid_pre.14"}, refusals, skip_tokens=24)  # doctest: +SKIP
        >>> features = scan.feature_set({"l14": "default-resid_pre.14-topk-8192"}, model=lm.spec)  # doctest: +SKIP
        >>> steer = clamp_steer(features, features.ranked(k=1), mode="set", value=8.0, saes={"l14": sae})  # doctest: +SKIP
    """
    if not refusal_conversations:
        raise EmptyDatasetError("no refusals to scan", fix="generate answers to harmful prompts and keep the refused ones")
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
        raise ConfigError(f"min_tokens must be an integer >= 1, got {min_tokens!r}", fix="give min_tokens=2 (O'Brien et al.) or more")
    if not 0 < min_share <= 1:
        raise ConfigError(f"min_share must be in (0, 1], got {min_share!r}", fix="give e.g. min_share=0.5")
    if set(saes) != set(points):
        raise ConfigError(f"saes and points name different SAEs ({sorted(saes)} vs {sorted(points)})", fix="give one point per SAE")
    parsed = {name: HookPoint.parse(points[name]) for name in saes}
    refusals = _tally(lm, saes, parsed, refusal_conversations, skip_tokens, batch_size, threshold)
    n_tokens = int(refusals.tokens.sum())
    if n_tokens == 0:
        raise EmptyDatasetError("no completion token left to score", fix="lower skip_tokens or pass longer completions")
    harmless = None
    if harmless_conversations:
        harmless = _tally(lm, saes, parsed, harmless_conversations, skip_tokens, batch_size, threshold)
    candidates = []
    n = len(refusal_conversations)
    for name in saes:
        fired = refusals.fired[name]
        share = (fired >= min_tokens).float().mean(0)
        mean_tokens = fired.float().mean(0)
        refusal_mean = refusals.sums[name] / n_tokens
        score = refusal_mean.clone()
        if harmless is not None:
            harmless_mean = harmless.sums[name] / max(int(harmless.tokens.sum()), 1)
            harmless_share = (harmless.fired[name] >= min_tokens).float().mean(0)
            score = score - harmless_mean
        for index in torch.nonzero(share >= min_share).flatten().tolist():
            candidates.append(LatentCandidate(
                name, index, float(score[index]), float(share[index]), float(mean_tokens[index]), float(refusal_mean[index]),
                None if harmless is None else float(harmless_mean[index]), None if harmless is None else float(harmless_share[index])))
    candidates.sort(key=lambda c: (-c.score, c.sae, c.index))
    return RefusalLatentScan(candidates=tuple(candidates), tokens_fired=refusals.fired, completion_tokens=refusals.tokens, points=parsed,
                             min_tokens=min_tokens, min_share=float(min_share), threshold=float(threshold), skip_tokens=skip_tokens,
                             n_harmless=len(harmless_conversations or ()))


__all__ = ["Conversation", "LatentCandidate", "RefusalLatentScan", "conversations_from_completions", "refusal_latent_candidates"]
