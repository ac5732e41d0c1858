"""Attack suites: jailbreak families run against a (steered) model, with attack success rates and transcripts.

Families, registered by name (one module each): ``templates`` (jailbreak wrappers), ``many-shot`` (fabricated
compliant exchanges), ``suffix`` (GCG / TAP texts appended) and ``crescendo`` (multi-turn escalation by an
attacker model, with backtracking). Every attack writes :class:`Transcript` values; :func:`replay_attack` re-runs
them under another steer without the attacker. See docs/attacks.md.

Example:
    >>> from refusal_steer.evaluation.attacks import get_attack, run_attack
    >>> result = run_attack(lm, get_attack("many-shot", shots=4), load_dataset("advbench", split="test", limit=20))  # doctest: +SKIP
    >>> result.rate, result.by_category, result.judge  # doctest: +SKIP
"""

from __future__ import annotations

# isort: off
# Importing registers each family.
from . import templates, many_shot, suffix, crescendo  # noqa: F401

# isort: on
from .attacker import Attacker, EndpointAttacker, LocalAttacker, make_attacker
from .base import Attack, Goal, RunOptions, Transcript, attack_names, categories_of, get_attack, goals_from_records, register_attack
from .crescendo import CrescendoAttack, attacker_turn_prompt, parse_next_message, render_instructions
from .many_shot import ManyShotAttack
from .replay import read_transcripts, replay, write_transcripts
from .results import AttackResult, replay_attack, run_attack, summarize
from .suffix import SuffixAttack
from .templates import TemplateAttack

__all__ = [
    "Attack",
    "AttackResult",
    "Attacker",
    "CrescendoAttack",
    "EndpointAttacker",
    "Goal",
    "LocalAttacker",
    "ManyShotAttack",
    "RunOptions",
    "SuffixAttack",
    "TemplateAttack",
    "Transcript",
    "attack_names",
    "attacker_turn_prompt",
    "categories_of",
    "get_attack",
    "goals_from_records",
    "make_attacker",
    "parse_next_message",
    "read_transcripts",
    "register_attack",
    "render_instructions",
    "replay",
    "replay_attack",
    "run_attack",
    "summarize",
    "write_transcripts",
]
