"""``many-shot``: k harmful user/assistant example pairs before the request (Anil et al. 2024, "Many-shot jailbreaking").

The examples are PyRIT's ``many_shot_examples.json`` (pinned sha256, the ``many-shot`` dataset), sent as a real
multi-turn message list: ``2k`` alternating user/assistant messages, then the request as the last user message
(``2k + 1`` messages). Each goal draws its own k examples from ``random.Random((seed, goal id))``; an example whose
question is the goal itself is never drawn.
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

#: The shot counts the docs suggest (Anil et al. sweep 4 to 256; 32 shots already fill ~4k tokens).
SUGGESTED_SHOTS = (4, 16, 32)


@register_attack("many-shot")
class ManyShotAttack:
    """Prefix each goal with ``shots`` fabricated compliant exchanges.

    Args:
        shots: example pairs per goal (k; 4, 16 or 32 are the usual; at most the 400 available).
        seed: seeds the per-goal draw.
    """

    name = "many-shot"

    def __init__(self, shots: int | str = 16, seed: int | str = 0) -> None:
        try:
            shots = int(shots)
        except (TypeError, ValueError):
            raise ConfigError(f"--shots must be a whole number, got {shots!r}", fix="e.g. --shots 16") from None
        if shots < 1:
            raise ConfigError(f"--shots must be >= 1, got {shots}", fix=f"use e.g. {', '.join(map(str, SUGGESTED_SHOTS))}")
        self.shots, self.seed = shots, int(seed)

    def params(self) -> dict[str, Any]:
        return {"shots": self.shots, "seed": self.seed}

    @cached_property
    def examples(self) -> list[Any]:
        from ...data import load_dataset

        examples = list(load_dataset("many-shot"))
        if self.shots > len(examples):
            raise ConfigError(f"--shots {self.shots} is more than the {len(examples)} many-shot examples", fix=f"use at most {len(examples)}")
        return examples

    def build(self, goal: Goal) -> tuple[list[Message], dict[str, Any]]:
        """``2 * shots`` example messages and the request; the params name the examples drawn."""
        from ...data import normalize_text

        key = normalize_text(goal.prompt)
        pool = [e for e in self.examples if normalize_text(e.messages[0]["content"]) != key]
        if self.shots > len(pool):
            raise ConfigError(f"--shots {self.shots} is more than the {len(pool)} many-shot examples that differ from goal {goal.id!r}",
                              fix=f"use at most {len(pool)}")
        chosen = seeded_rng(self.seed, goal, "many-shot").sample(pool, self.shots)
        messages: list[Message] = [dict(m) for example in chosen for m in example.messages]
        messages.append({"role": "user", "content": goal.prompt})
        return messages, {"shots": self.shots, "examples": [e.id for e in chosen], "seed": self.seed}

    def run(self, lm: LoadedModel, goals: Sequence[Goal], interventions: Sequence[Intervention], judge: Judge,
            options: RunOptions) -> list[Transcript]:
        return run_single_turn(self.name, lm, goals, [self.build(g) for g in goals], interventions, judge, options)
