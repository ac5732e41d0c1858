"""Record types (one frozen dataclass per kind of item) and the :class:`Dataset` that holds them.

Every dataset holds records of one kind. The kind name is what the registry, the JSON cache and
``refusal-steer data list`` report, so code downstream can dispatch on ``dataset.info.kind``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from ..errors import ConfigError


@dataclass(frozen=True)
class Instruction:
    """A single user instruction: harmful, harmless or over-refusal prompts, jailbreak goals."""

    id: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Conversation:
    """A chat transcript as ``[{"role": ..., "content": ...}]``: chat corpora, many-shot pairs, user JSONL."""

    id: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MultipleChoice:
    """A multiple-choice question (MMLU, ARC); ``answer`` indexes ``choices``."""

    id: str
    question: str
    choices: list[str]
    answer: int
    subject: str


@dataclass(frozen=True)
class MathProblem:
    """A word problem with a short final answer (GSM8K); ``solution`` is the worked answer if known."""

    id: str
    question: str
    answer: str
    solution: str = ""


@dataclass(frozen=True)
class JailbreakTemplate:
    """A jailbreak wrapper whose ``placeholder`` (e.g. ``prompt``) receives the harmful request."""

    id: str
    template: str
    placeholder: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelledResponse:
    """A model response to ``objective`` with a human refusal label (1 = refusal), to validate judges."""

    id: str
    objective: str
    response: str
    human_score: int


@dataclass(frozen=True)
class Text:
    """A plain text item that is not a prompt to a model: refusal markers, attacker instructions."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


Record = Instruction | Conversation | MultipleChoice | MathProblem | JailbreakTemplate | LabelledResponse | Text
R = TypeVar("R", Instruction, Conversation, MultipleChoice, MathProblem, JailbreakTemplate, LabelledResponse, Text)

#: Kind name -> record class; the kind is stored in caches and shown by ``data list``.
RECORD_KINDS: dict[str, type] = {
    "instruction": Instruction,
    "conversation": Conversation,
    "multiple_choice": MultipleChoice,
    "math": MathProblem,
    "jailbreak_template": JailbreakTemplate,
    "labelled_response": LabelledResponse,
    "text": Text,
}
_KIND_OF_CLASS = {cls: kind for kind, cls in RECORD_KINDS.items()}


def kind_of(record: Record) -> str:
    """The kind name of a record (``"instruction"``, ``"conversation"``, ...)."""
    return _KIND_OF_CLASS[type(record)]


def record_text(record: Record) -> str:
    """The text that identifies a record for splitting and de-duplication.

    For a conversation this is its first user message, so a harmful request used as a many-shot
    example lands in the same split as the same request in AdvBench or HarmBench.
    """
    if isinstance(record, Instruction):
        return record.prompt
    if isinstance(record, Conversation):
        users = [m["content"] for m in record.messages if m.get("role") == "user"]
        return users[0] if users else "\n".join(m["content"] for m in record.messages)
    if isinstance(record, (MultipleChoice, MathProblem)):
        return record.question
    if isinstance(record, JailbreakTemplate):
        return record.template
    if isinstance(record, LabelledResponse):
        return record.objective
    return record.text


def record_to_dict(record: Record) -> dict[str, Any]:
    """A JSON-ready dict of a record's fields (for caches, ``--json`` output and run artifacts)."""
    return dataclasses.asdict(record)


def record_from_dict(kind: str, data: dict[str, Any]) -> Record:
    """Rebuild a record of ``kind`` from :func:`record_to_dict` output."""
    return RECORD_KINDS[kind](**data)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: name, record kind, size, licence and provenance (shown by ``data list``)."""

    name: str
    kind: str
    n: int | None
    license: str
    source: str
    description: str
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


class Dataset(Sequence[R], Generic[R]):
    """An immutable sequence of records of one kind plus its :class:`DatasetInfo`.

    Example:
        >>> ds = Dataset([Instruction("a", "Say hi")], DatasetInfo("toy", "instruction", None, "MIT", "here", "toy"))
        >>> ds.info.n, ds.prompts
        (1, ['Say hi'])
    """

    def __init__(self, records: Sequence[R], info: DatasetInfo) -> None:
        self._records: tuple[R, ...] = tuple(records)
        wrong = [r for r in self._records if kind_of(r) != info.kind]
        if wrong:
            raise ConfigError(
                f"dataset {info.name!r} is of kind {info.kind!r} but record {wrong[0].id!r} is {kind_of(wrong[0])!r}",
                fix="a dataset holds records of one kind; split mixed files into one file per kind",
            )
        seen: set[str] = set()
        for rec in self._records:
            if rec.id in seen:
                raise ConfigError(
                    f"dataset {info.name!r} has the id {rec.id!r} twice", fix="give every record a unique id"
                )
            seen.add(rec.id)
        self.info = dataclasses.replace(info, n=len(self._records))

    @overload
    def __getitem__(self, index: int) -> R: ...

    @overload
    def __getitem__(self, index: slice) -> Dataset[R]: ...

    def __getitem__(self, index: int | slice) -> R | Dataset[R]:
        if isinstance(index, slice):
            return Dataset(self._records[index], self.info)
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[R]:
        return iter(self._records)

    def __repr__(self) -> str:
        split = f", split={self.info.split!r}" if self.info.split else ""
        return f"Dataset(name={self.info.name!r}, kind={self.info.kind!r}, n={len(self)}{split})"

    def select(self, indices: Sequence[int], split: str | None = None) -> Dataset[R]:
        """A new dataset with the records at ``indices`` (in that order), optionally tagged with a split."""
        info = dataclasses.replace(self.info, split=split) if split is not None else self.info
        return Dataset([self._records[i] for i in indices], info)

    @property
    def prompts(self) -> list[str]:
        """The prompt strings of an ``instruction`` dataset (the common case for refusal work)."""
        if self.info.kind != "instruction":
            raise ConfigError(
                f"dataset {self.info.name!r} holds {self.info.kind!r} records, not instructions",
                fix="iterate over the records instead of .prompts",
            )
        return [r.prompt for r in self._records]  # type: ignore[union-attr]


__all__ = [
    "Instruction",
    "Conversation",
    "MultipleChoice",
    "MathProblem",
    "JailbreakTemplate",
    "LabelledResponse",
    "Text",
    "Record",
    "RECORD_KINDS",
    "kind_of",
    "record_text",
    "record_to_dict",
    "record_from_dict",
    "DatasetInfo",
    "Dataset",
]
