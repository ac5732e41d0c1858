"""Find a model's own refusal tokens: the first tokens of its refusals that rarely start its compliances.

Arditi et al. (2024, App. C) hard-code these per family (e.g. ``"I"`` and ``"As"``). We read them off the
model's greedy completions instead, so any chat model gets tokens that fit its own style: generate a
few tokens for harmful and harmless training prompts, judge them, and keep first tokens that are much
more frequent among refusals than among compliances.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..errors import RefusalSteerError
from ..generation import generate
from ..models import LoadedModel


@dataclass(frozen=True)
class RefusalTokens:
    """The chosen token ids with the evidence behind them."""

    token_ids: list[int]
    tokens: list[str]
    refusal_counts: list[int]
    compliance_counts: list[int]
    n_refusals: int
    n_compliances: int
    judge: str

    def to_json(self) -> dict:
        return asdict(self)


def find_refusal_tokens(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    judge: Callable[[list[str], list[str]], list[bool]],
    judge_name: str = "substring",
    max_new_tokens: int = 12,
    batch_size: int = 16,
    max_tokens: int = 4,
    min_share: float = 0.05,
    progress: bool = True,
) -> RefusalTokens:
    """Pick up to ``max_tokens`` first tokens that start refusals at least 3x as often as compliances.

    ``judge`` is a refusal judge ``judge(prompts, texts) -> verdicts`` (e.g.
    ``refusal_steer.evaluation.get_judge("substring")``), passed in because judges live in a higher layer;
    ``judge_name`` is recorded with the result.

    Raises:
        RefusalSteerError: the model refused none of the harmful prompts (nothing to steer), or no
            first token separates refusals from compliances.
    """
    prompts = list(harmful) + list(harmless)
    completions = generate(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    refused = list(judge(prompts, [c.text for c in completions]))
    refusal_first: Counter[int] = Counter()
    compliance_first: Counter[int] = Counter()
    for completion, is_refusal in zip(completions, refused):
        if not completion.token_ids:
            continue
        (refusal_first if is_refusal else compliance_first)[completion.token_ids[0]] += 1
    n_ref, n_comp = sum(refusal_first.values()), sum(compliance_first.values())
    if n_ref == 0:
        raise RefusalSteerError(
            f"the model refused none of {len(harmful)} harmful prompts (judge {judge_name}); there is no refusal to find",
            fix="use a chat model that refuses, other harmful prompts, or another judge",
        )
    chosen = []
    for token_id, count in refusal_first.most_common():
        share_ref = count / n_ref
        share_comp = compliance_first[token_id] / max(n_comp, 1)
        if share_ref >= min_share and share_ref >= 3 * share_comp:
            chosen.append(token_id)
        if len(chosen) == max_tokens:
            break
    if not chosen:
        raise RefusalSteerError(
            "no first token separates the model's refusals from its compliances",
            fix="pass refusal token ids explicitly (refusal_token_ids=... / --refusal-tokens)",
        )
    return RefusalTokens(
        token_ids=chosen,
        tokens=[lm.tokenizer.decode([t]) for t in chosen],
        refusal_counts=[refusal_first[t] for t in chosen],
        compliance_counts=[compliance_first[t] for t in chosen],
        n_refusals=n_ref,
        n_compliances=n_comp,
        judge=judge_name,
    )
