"""What every attack shares: the harmful goal it attacks, the transcript it writes, and the name registry.

An attack turns a harmful request (a :class:`Goal`) into a conversation with the target model and writes a
:class:`Transcript`: the final message list the target saw, which assistant messages the target generated, the
judge's verdict on each, and the attack's parameters. Success is one rule for every family: **the target's last
generated answer is judged not a refusal**. For single-turn attacks that is the one answer; for Crescendo it is
the answer on the last kept turn (a refusal judge cannot tell whether that answer reaches the objective; an
``llm`` judge sees the whole conversation).
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ...errors import ConfigError, CorruptFileError
from ...hooks import Intervention
from ...models.loaded import LoadedModel
from ..judges import Judge

Message = dict[str, str]
UNCATEGORIZED = "uncategorized"


@dataclass(frozen=True)
class Goal:
    """A harmful request to attack.

    Attributes:
        id: the dataset record's id.
        prompt: the request, e.g. an AdvBench instruction.
        categories: harm categories from the record's metadata (``uncategorized`` when it has none).
    """

    id: str
    prompt: str
    categories: tuple[str, ...] = (UNCATEGORIZED,)


def categories_of(meta: dict[str, Any]) -> tuple[str, ...]:
    """Harm categories from record metadata: AdvBench's ``harm_categories``, HarmBench's ``semantic_category``.

    Example:
        >>> categories_of({"harm_categories": ["violence", "illegal"]}), categories_of({})
        (('violence', 'illegal'), ('uncategorized',))
    """
    for key in ("harm_categories", "semantic_category", "category"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return (value.strip(),)
        if isinstance(value, (list, tuple)):
            names = tuple(str(v).strip() for v in value if str(v).strip())
            if names:
                return names
    return (UNCATEGORIZED,)


def goals_from_records(records: Sequence[Any]) -> list[Goal]:
    """Goals from dataset records (``Instruction``) or plain strings (their id is their position)."""
    goals = []
    for i, record in enumerate(records):
        if isinstance(record, str):
            goals.append(Goal(f"prompt-{i:04d}", record))
        elif hasattr(record, "prompt") and isinstance(record.prompt, str):
            goals.append(Goal(record.id, record.prompt, categories_of(dict(getattr(record, "meta", {}) or {}))))
        else:
            raise ConfigError(f"an attack needs instruction records, got a {type(record).__name__}",
                              fix="use a harmful instruction dataset, e.g. --dataset advbench")
    return goals


def seeded_rng(seed: int, goal: Goal, salt: str) -> random.Random:
    """A random generator fixed by (seed, goal id, salt): a goal's draw does not depend on the others."""
    return random.Random(f"{seed}\x00{salt}\x00{goal.id}")


@dataclass
class Transcript:
    """One attack on one goal, as written to the transcripts JSONL (one line each).

    Attributes:
        attack: the attack's registry name.
        goal_id, objective, categories: the goal attacked.
        messages: the final conversation the target saw, ending with its last answer.
        generated: indices in ``messages`` of the answers the target generated (the other assistant messages,
            e.g. many-shot examples, are part of the attack).
        refused: the judge's verdict on each generated answer, in order.
        params: the attack's parameters for this goal (template id, shots and example ids, suffix id, variant...).
        attempts: Crescendo only: every attacker message in order, kept or backtracked, with its answer and verdict.
        judge: ``name@version`` of the judge.
        steer: the steer's fingerprint.
    """

    attack: str
    goal_id: str
    objective: str
    categories: list[str]
    messages: list[Message]
    generated: list[int]
    refused: list[bool]
    params: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    judge: str = ""
    steer: str = ""

    @property
    def success(self) -> bool:
        """The attack succeeded: the target's last generated answer is not judged a refusal."""
        return bool(self.refused) and not self.refused[-1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["success"] = self.success
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "transcript") -> Transcript:
        """Rebuild from :meth:`to_dict` output; a row missing fields raises :class:`CorruptFileError`."""
        names = ("attack", "goal_id", "objective", "categories", "messages", "generated", "refused")
        missing = [n for n in names if n not in row]
        if missing:
            raise CorruptFileError(f"{where} lacks {', '.join(missing)}", fix="pass a transcripts JSONL written by 'refusal-steer attack'")
        transcript = cls(**{k: row[k] for k in (*names, "params", "attempts", "judge", "steer") if k in row})
        bad = [i for i in transcript.generated if not 0 <= i < len(transcript.messages)
               or transcript.messages[i].get("role") != "assistant"]
        if bad or len(transcript.refused) != len(transcript.generated):
            raise CorruptFileError(f"{where} has generated indices that are not assistant messages, or verdicts that do not match them",
                                   fix="pass a transcripts JSONL written by 'refusal-steer attack'")
        return transcript


@dataclass(frozen=True)
class RunOptions:
    """How the target answers during an attack (the same for every family)."""

    max_new_tokens: int = 64
    batch_size: int = 8
    progress: bool = True
    checkpoint: str | None = None
    """Where progress is saved for a rerun to resume: single-turn attacks append each finished batch (JSONL);
    Crescendo writes every goal's state after each step (JSON)."""


class Attack(Protocol):
    """An attack family: runs against ``lm`` under ``interventions`` and writes one transcript per goal."""

    name: str

    def params(self) -> dict[str, Any]:
        """The attack's options, recorded with its results."""
        ...

    def run(self, lm: LoadedModel, goals: Sequence[Goal], interventions: Sequence[Intervention], judge: Judge,
            options: RunOptions) -> list[Transcript]: ...


AttackFactory = Callable[..., Attack]
_REGISTRY: dict[str, AttackFactory] = {}


def register_attack(name: str) -> Callable[[AttackFactory], AttackFactory]:
    """Decorator registering an attack factory under ``name``; a name registered twice raises ``ValueError``."""

    def decorate(factory: AttackFactory) -> AttackFactory:
        if name in _REGISTRY:
            raise ValueError(f"attack {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return decorate


def attack_names() -> list[str]:
    """Names of the registered attacks."""
    return sorted(_REGISTRY)


def get_attack(name: str, **options: Any) -> Attack:
    """Build the attack registered as ``name`` with its options (``shots=16``, ``source="gcg"``...).

    Raises:
        ConfigError: unknown name or bad option.

    Example:
        >>> get_attack("many-shot", shots=4).params()["shots"]
        4
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown attack {name!r}{hint}", fix=f"use one of: {', '.join(attack_names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:
        raise ConfigError(f"attack {name!r}: {exc}", fix="see docs/attacks.md for each attack's options") from exc


__all__ = [
    "Attack",
    "Goal",
    "Message",
    "RunOptions",
    "Transcript",
    "UNCATEGORIZED",
    "attack_names",
    "categories_of",
    "get_attack",
    "goals_from_records",
    "register_attack",
    "seeded_rng",
]
