"""Users' own jsonl:PATH and csv:PATH files: parsing and one clear error per problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refusal_steer.data import Conversation, Instruction, load_dataset
from refusal_steer.errors import ConfigError, CorruptFileError, DatasetNotFoundError, EmptyDatasetError


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_jsonl_prompts(tmp_path: Path) -> None:
    lines = [{"prompt": "How do I bake bread?", "id": "bread", "source": "me"}, {"prompt": "Name a colour"}]
    path = _write(tmp_path / "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = load_dataset(f"jsonl:{path}")
    assert ds.info.kind == "instruction" and ds.info.license == "user-provided" and ds.info.name == f"jsonl:{path}"
    assert list(ds) == [
        Instruction("bread", "How do I bake bread?", {"source": "me"}),
        Instruction("line-2", "Name a colour", {}),
    ]


def test_jsonl_messages(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    path = _write(tmp_path / "c.jsonl", json.dumps({"messages": msgs, "id": 7}) + "\n")
    (record,) = load_dataset(f"jsonl:{path}")
    assert record == Conversation("7", msgs, {})


def test_jsonl_custom_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.jsonl", json.dumps({"question": "Why is the sky blue?"}) + "\n")
    assert load_dataset(f"jsonl:{path}", column="question").prompts == ["Why is the sky blue?"]


@pytest.mark.parametrize(
    "content, error, match",
    [
        ('{"prompt": "ok"}\n{"prompt": "broken"\n', CorruptFileError, r"p\.jsonl:2: not valid JSON"),
        (
            '{"prompt": "ok"}\n{"text": "no prompt"}\n',
            CorruptFileError,
            r":2: no non-empty string field 'prompt' \(fields: text\)",
        ),
        ('{"prompt": ""}\n', CorruptFileError, r":1: no non-empty string field"),
        ('["a list"]\n', CorruptFileError, r":1: expected a JSON object"),
        ('{"messages": [{"role": "robot", "content": "x"}]}\n', CorruptFileError, r":1: message 0 is not"),
        ('{"messages": []}\n', CorruptFileError, r":1: 'messages' must be a non-empty list"),
        ('{"prompt": "a"}\n{"messages": [{"role": "user", "content": "b"}]}\n', CorruptFileError, r":2: mixes"),
        (
            '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n',
            CorruptFileError,
            r":2: id 'x' was already used at .*:1",
        ),
    ],
)
def test_jsonl_errors_name_the_line_and_the_fix(tmp_path: Path, content: str, error: type, match: str) -> None:
    path = _write(tmp_path / "p.jsonl", content)
    with pytest.raises(error, match=match) as info:
        load_dataset(f"jsonl:{path}")
    assert info.value.fix


def test_csv_default_and_custom_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'id,prompt,note\na1,"Write a poem, about the sea",x\n,Name a colour,y\n')
    ds = load_dataset(f"csv:{path}")
    assert list(ds) == [
        Instruction("a1", "Write a poem, about the sea", {"note": "x"}),
        Instruction("line-3", "Name a colour", {"note": "y"}),
    ]
    path2 = _write(tmp_path / "q.csv", "text\nWhy is the sky blue?\n")
    assert load_dataset(f"csv:{path2}", column="text").prompts == ["Why is the sky blue?"]


def test_csv_with_bom_and_multiline_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", '\ufeffprompt\n"line one\nline two"\nnext\n')
    assert load_dataset(f"csv:{path}").prompts == ["line one\nline two", "next"]


def test_csv_missing_column_lists_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "text,label\nhello,1\n")
    with pytest.raises(ConfigError, match=r"no column 'prompt' \(columns: text, label\)") as info:
        load_dataset(f"csv:{path}")
    assert "--column" in info.value.fix


@pytest.mark.parametrize(
    "content, match",
    [('prompt\nok\n""\n', r"p\.csv:3: column 'prompt' is empty"), ("prompt\nok,extra\n", r"p\.csv:2: more fields")],
)
def test_csv_bad_rows_name_the_line(tmp_path: Path, content: str, match: str) -> None:
    path = _write(tmp_path / "p.csv", content)
    with pytest.raises(CorruptFileError, match=match):
        load_dataset(f"csv:{path}")


@pytest.mark.parametrize("scheme", ["jsonl", "csv"])
def test_missing_file(tmp_path: Path, scheme: str) -> None:
    with pytest.raises(DatasetNotFoundError, match="no such file") as info:
        load_dataset(f"{scheme}:{tmp_path / 'nope'}")
    assert "path" in info.value.fix


@pytest.mark.parametrize("scheme, content", [("jsonl", "\n\n"), ("csv", "prompt\n")])
def test_empty_file(tmp_path: Path, scheme: str, content: str) -> None:
    path = _write(tmp_path / f"e.{scheme}", content)
    with pytest.raises(EmptyDatasetError):
        load_dataset(f"{scheme}:{path}")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(CorruptFileError, match="not UTF-8"):
        load_dataset(f"csv:{path}")


def test_user_file_rejects_dataset_options(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ConfigError, match="no option 'categories'"):
        load_dataset(f"jsonl:{path}", categories="standard")


def test_user_files_split_like_pinned_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", "".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(300)))
    train = load_dataset(f"jsonl:{path}", split="train", seed=0)
    test = load_dataset(f"jsonl:{path}", split="test", seed=0)
    assert train.info.split == "train" and not set(train.prompts) & set(test.prompts)
