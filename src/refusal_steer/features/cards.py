"""Feature cards: what a selected latent is, read off held-out text and the model's unembedding.

Each card holds the latent's top-activating contexts on held-out chat text (the token marked), its firing
frequency there, the logit-lens top and bottom tokens of its decoder row (the row through the final norm's
scale and the unembedding, as Bricken et al. 2023 and Neuronpedia show), its cosine, attribution and ActDiff
scores from discovery, and what clamping it alone does to refusal (mean harmful refusal log-odds on the
validation prompts with that latent multiplied by the calibrated c, beside the unsteered value).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..directions.scores import last_token_logprobs, refusal_log_odds
from ..models.adapters import get_submodule
from ..models.loaded import LoadedModel
from ..sae.base import Sae
from ..sae.latent_steers import decoder_rows
from .featureset import FeatureSet, LatentRef, clamp_steer
from .scores import latent_activations

logger = logging.getLogger(__name__)


@dataclass
class FeatureCard:
    """Everything shown about one latent (JSON-able via :meth:`to_json`)."""

    rank: int
    sae: str
    point: str
    index: int
    score: float
    scores: dict[str, Any]
    firing_frequency: float = 0.0
    n_tokens: int = 0
    max_activation: float = 0.0
    contexts: list[dict[str, Any]] = field(default_factory=list)
    logit_top: list[tuple[str, float]] = field(default_factory=list)
    logit_bottom: list[tuple[str, float]] = field(default_factory=list)
    clamp_alone: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def logit_lens(lm: LoadedModel, row: Tensor, k: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Top and bottom ``k`` tokens of ``row`` (model units) through the final norm's scale and the unembedding."""
    unembed = get_submodule(lm.model, lm.adapter.unembed).weight.detach().float()
    norm = get_submodule(lm.model, lm.adapter.final_norm)
    scale = getattr(norm, "weight", None)
    vec = row.float().to(unembed.device)
    if scale is not None:
        vec = vec * scale.detach().float().to(unembed.device)
    logits = unembed @ vec
    top, bottom = torch.topk(logits, k), torch.topk(-logits, k)
    decode = lm.tokenizer.convert_ids_to_tokens
    return ([(str(t), float(v)) for t, v in zip(decode(top.indices.tolist()), top.values)],
            [(str(t), float(-v)) for t, v in zip(decode(bottom.indices.tolist()), bottom.values)])


def _context(lm: LoadedModel, tokens: Sequence[int], at: int, width: int = 12) -> dict[str, str]:
    tok = lm.tokenizer
    return {"before": tok.decode(list(tokens[max(0, at - width):at])), "token": tok.decode([tokens[at]]),
            "after": tok.decode(list(tokens[at + 1:at + 4]))}


def top_contexts(lm: LoadedModel, saes: Mapping[str, Sae], features: FeatureSet, latents: Sequence[LatentRef], sequences: Sequence[Sequence[int]],
                 *, n_contexts: int = 5, batch_size: int = 8) -> dict[tuple[str, int], dict[str, Any]]:
    """Per latent: its ``n_contexts`` highest activations on ``sequences`` (one per sequence), firing frequency and max."""
    names = sorted({r.sae for r in latents})
    points = {n: features.point(n) for n in names}
    heaps: dict[tuple[str, int], list[tuple[float, int, int]]] = {r.key(): [] for r in latents}
    fired = {r.key(): 0 for r in latents}
    total = 0
    for start in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[start:start + batch_size]]
        acts, mask = latent_activations(lm, {n: saes[n] for n in names}, points, chunk, features.skip_tokens)
        total += int(mask.sum())
        width = mask.shape[1]
        for ref in latents:
            z = acts[ref.sae][..., ref.index].masked_fill(~mask, 0.0)
            fired[ref.key()] += int((z > 0).sum())
            best, where = z.max(dim=1)
            for row in range(len(chunk)):
                value = float(best[row])
                if value <= 0:
                    continue
                pad = width - len(chunk[row])
                item = (value, start + row, int(where[row]) - pad)
                heap = heaps[ref.key()]
                if len(heap) < n_contexts:
                    heapq.heappush(heap, item)
                else:
                    heapq.heappushpop(heap, item)
    out = {}
    for key, heap in heaps.items():
        ranked = sorted(heap, reverse=True)
        out[key] = {"firing_frequency": fired[key] / max(total, 1), "n_tokens": total,
                    "max_activation": ranked[0][0] if ranked else 0.0,
                    "contexts": [{**_context(lm, sequences[i], pos), "activation": v} for v, i, pos in ranked]}
    return out


def feature_cards(lm: LoadedModel, saes: Mapping[str, Sae], features: FeatureSet, sequences: Sequence[Sequence[int]], *,
                  val_harmful: Sequence[str], refusal_ids: Sequence[int], limit: int | None = None, n_contexts: int = 5,
                  batch_size: int = 8, system: str | None = None, progress: bool = False) -> list[FeatureCard]:
    """Cards for the selected global set (its first ``limit`` latents); ``progress`` shows a bar over the latents."""
    from tqdm.auto import tqdm

    latents = features.ranked("selected", limit)
    if progress:
        logger.info("feature cards: top contexts of %d latents over %d held-out sequences", len(latents), len(sequences))
    contexts = top_contexts(lm, saes, features, latents, sequences, n_contexts=n_contexts, batch_size=batch_size)
    scale = float(features.calibration.get("bypass", {}).get("scale", 0.0))
    base = float(refusal_log_odds(last_token_logprobs(lm, list(val_harmful), batch_size=batch_size, system=system), refusal_ids).mean())
    cards = []
    for rank, ref in enumerate(tqdm(latents, desc="feature cards (clamp alone, val)", unit="latent", disable=not progress), 1):
        top, bottom = logit_lens(lm, decoder_rows(saes[ref.sae], [ref.index])[0])
        steer = clamp_steer(features, [ref], mode="scale", value=scale, saes=dict(saes))
        alone = float(refusal_log_odds(last_token_logprobs(lm, list(val_harmful), steer, batch_size=batch_size, system=system), refusal_ids).mean())
        info = contexts[ref.key()]
        cards.append(FeatureCard(rank=rank, sae=ref.sae, point=str(features.point(ref.sae)), index=ref.index, score=ref.score,
                                 scores=features.details.get(f"{ref.sae}:{ref.index}", {}), firing_frequency=info["firing_frequency"],
                                 n_tokens=info["n_tokens"], max_activation=info["max_activation"], contexts=info["contexts"], logit_top=top,
                                 logit_bottom=bottom, clamp_alone={"scale": scale, "baseline_log_odds": base, "log_odds": alone,
                                                                   "n_prompts": len(val_harmful)}))
    return cards


def cards_markdown(cards: Sequence[FeatureCard], title: str = "Feature cards") -> str:
    """The cards as Markdown (the report section and ``features show``'s source)."""
    lines = [f"## {title}", ""]
    for card in cards:
        s = card.scores
        lines += [f"### #{card.rank} {card.sae} latent {card.index} ({card.point})", "",
                  f"score {card.score:.4g}; cosine {s.get('cosine', float('nan')):.3f}; attribution {s.get('attribution') or 0:.4g}; "
                  f"ActDiff {s.get('actdiff', float('nan')):.3g}; fires on {card.firing_frequency:.2%} of {card.n_tokens} held-out tokens "
                  f"(max {card.max_activation:.3g}).", "",
                  f"Clamped alone (x {card.clamp_alone.get('scale')}): harmful refusal log-odds {card.clamp_alone.get('baseline_log_odds', 0):.2f} -> "
                  f"{card.clamp_alone.get('log_odds', 0):.2f} (mean over {card.clamp_alone.get('n_prompts')} validation prompts).", "",
                  "Logit lens, top: " + ", ".join(f"`{t}`" for t, _ in card.logit_top[:8]),
                  "", "Logit lens, bottom: " + ", ".join(f"`{t}`" for t, _ in card.logit_bottom[:8]), "", "Top contexts:", ""]
        for ctx in card.contexts:
            before = ctx["before"].replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
            token = ctx["token"].replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
            after = ctx["after"].replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
            lines.append(f"- ({ctx['activation']:.2f}) …{before}**[{token}]**{after}…")
        lines.append("")
    return "\n".join(lines)


__all__ = ["FeatureCard", "cards_markdown", "feature_cards", "logit_lens", "top_contexts"]
