"""Screening steer settings on validation prompts by refusal log-odds and harmless KL (no generation).

``features find`` (latent count x multiplier) and ``compare`` (a latent's coefficient) both choose a setting
this way: each candidate's mean refusal log-odds on harmful validation prompts and mean next-token KL on
harmless ones; the settings within the KL budget, lowest log-odds first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from ..directions.scores import kl_divergence, last_token_logprobs, refusal_log_odds
from ..hooks import Intervention
from ..models.loaded import LoadedModel


def screen_settings(lm: LoadedModel, settings: Sequence[dict[str, Any]], build: Callable[[dict[str, Any]], list[Intervention]],
                    val_harmful: list[str], val_harmless: list[str], refusal_ids: list[int], *, batch_size: int,
                    system: str | None = None, desc: str = "screening (val)", progress: bool = True) -> list[dict[str, Any]]:
    """One row per setting: the setting's fields plus ``harmful_log_odds`` and ``harmless_kl`` under ``build(setting)``."""
    base = last_token_logprobs(lm, val_harmless, batch_size=batch_size, system=system)
    table = []
    for setting in tqdm(list(settings), desc=desc, unit="setting", disable=not progress):
        steer = build(setting)
        odds = refusal_log_odds(last_token_logprobs(lm, val_harmful, steer, batch_size=batch_size, system=system), refusal_ids)
        kl = kl_divergence(base, last_token_logprobs(lm, val_harmless, steer, batch_size=batch_size, system=system))
        table.append({**setting, "harmful_log_odds": float(odds.mean()), "harmless_kl": float(kl.mean())})
    return table


def within_kl(table: list[dict[str, Any]], kl_max: float) -> list[dict[str, Any]]:
    """The rows within the KL budget, lowest log-odds first (the single lowest-KL row when none is within it)."""
    passing = [row for row in table if row["harmless_kl"] <= kl_max] or sorted(table, key=lambda r: r["harmless_kl"])[:1]
    return sorted(passing, key=lambda r: r["harmful_log_odds"])
