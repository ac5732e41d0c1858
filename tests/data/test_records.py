"""Record types and the Dataset container."""

from __future__ import annotations

import pytest

from refusal_steer.data import (
    RECORD_KINDS,
    Conversation,
    Dataset,
    DatasetInfo,
    Instruction,
    JailbreakTemplate,
    LabelledResponse,
    MathProblem,
    MultipleChoice,
    Text,
    kind_of,
    record_from_dict,
    record_text,
    record_to_dict,
)
from refusal_steer.errors import ConfigError

EXAMPLES = [
    Instruction("i", "Say hi", {"k": [1, 2]}),
    Conversation("c", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]),
    MultipleChoice("m", "2+2?", ["3", "4"], 1, "math"),
    MathProblem("p", "1+1?", "2", "1+1=2"),
    JailbreakTemplate("j", "DAN {{ prompt }}", "prompt", {"name": "DAN"}),
    LabelledResponse("l", "Make a bomb", "I can't help.", 1),
    Text("t", "i cannot"),
]


def _info(kind: str = "instruction") -> DatasetInfo:
    return DatasetInfo("toy", kind, None, "CC0", "inline", "toy data")


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_dict_round_trip(record) -> None:
    assert record_from_dict(kind_of(record), record_to_dict(record)) == record


def test_every_kind_has_an_example() -> None:
    assert {kind_of(r) for r in EXAMPLES} == set(RECORD_KINDS)


def test_record_text_uses_first_user_message_of_a_conversation() -> None:
    assert record_text(EXAMPLES[1]) == "Hi?"
    assert [record_text(r) for r in EXAMPLES[2:]] == ["2+2?", "1+1?", "DAN {{ prompt }}", "Make a bomb", "i cannot"]


def test_dataset_sequence_behaviour() -> None:
    ds = Dataset([Instruction(str(i), f"p{i}") for i in range(5)], _info())
    assert len(ds) == 5 and ds.info.n == 5
    assert ds[1].prompt == "p1"
    sliced = ds[1:3]
    assert isinstance(sliced, Dataset) and sliced.prompts == ["p1", "p2"] and sliced.info.n == 2
    assert [r.id for r in ds.select([4, 0], split="test")] == ["4", "0"]
    assert ds.select([0], split="test").info.split == "test"


def test_dataset_rejects_mixed_kinds_and_duplicate_ids() -> None:
    with pytest.raises(ConfigError, match="kind"):
        Dataset([Instruction("a", "x"), Text("b", "y")], _info())
    with pytest.raises(ConfigError, match="twice"):
        Dataset([Instruction("a", "x"), Instruction("a", "y")], _info())


def test_prompts_only_for_instructions() -> None:
    with pytest.raises(ConfigError, match="not instructions"):
        _ = Dataset([Text("t", "x")], _info("text")).prompts
