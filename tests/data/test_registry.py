"""The registry, load_dataset's options, limit and split handling, and the JSON cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from refusal_steer.data import (
    DatasetSpec,
    Instruction,
    dataset_names,
    get_spec,
    list_datasets,
    load_dataset,
    register_dataset,
)
from refusal_steer.errors import ConfigError, DatasetNotFoundError, EmptyDatasetError

EXPECTED_NAMES = {
    "advbench",
    "harmbench-val",
    "harmbench-test",
    "harmbench-prompts",
    "harmful-curated",
    "harmless",
    "overrefusal-edgy",
    "overrefusal-expanded",
    "overrefusal",
    "jailbreak-templates",
    "many-shot",
    "crescendo",
    "refusal-labels",
    "refusal-markers",
    "mmlu",
    "arc-challenge",
    "arc-easy",
    "gsm8k",
    "sharegpt",
}


class _CountingLoader:
    """A toy loader that records how often it ran."""

    def __init__(self, n: int = 50) -> None:
        self.calls = 0
        self.n = n

    def __call__(self, prefix: str = "prompt") -> list[Instruction]:
        self.calls += 1
        return [Instruction(f"t{i}", f"{prefix} {i}") for i in range(self.n)]


def _spec(loader: _CountingLoader, name: str = "toy") -> DatasetSpec:
    return DatasetSpec(name, "instruction", "CC0", "inline", "toy data", loader)


def test_all_sources_registered_with_licence() -> None:
    assert set(dataset_names()) >= EXPECTED_NAMES
    for name in EXPECTED_NAMES:
        spec = get_spec(name)
        assert spec.license and spec.source and spec.description


def test_unknown_dataset_error_lists_the_fix() -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("advbnech")
    assert "unknown dataset 'advbnech'" in info.value.message
    assert "did you mean 'advbench'" in info.value.message
    assert "refusal-steer data list" in info.value.fix and "jsonl:PATH" in info.value.fix


def test_unknown_dataset_that_looks_like_a_file_suggests_the_scheme(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("prompt\nhi\n")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(str(path))
    assert f"csv:{path}" in info.value.fix


def test_registering_a_name_twice_raises() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset(_spec(_CountingLoader(), name="advbench"))


def test_spec_validates_kind_and_name() -> None:
    with pytest.raises(ConfigError, match="kind"):
        DatasetSpec("x", "images", "CC0", "inline", "d", _CountingLoader())
    with pytest.raises(ConfigError, match="name"):
        DatasetSpec("jsonl:x", "instruction", "CC0", "inline", "d", _CountingLoader())


def test_unknown_option_lists_the_options(tmp_cache: Path) -> None:
    with pytest.raises(ConfigError, match="no option 'colour'") as info:
        load_dataset(_spec(_CountingLoader()), colour="red")
    assert "prefix" in info.value.fix


def test_cache_skips_the_loader_and_is_keyed_by_options(tmp_cache: Path) -> None:
    loader = _CountingLoader()
    first = load_dataset(_spec(loader))
    second = load_dataset(_spec(loader))
    assert loader.calls == 1 and list(first) == list(second)
    assert list((tmp_cache / "datasets").glob("toy-1-*.json"))
    other = load_dataset(_spec(loader), prefix="other")
    assert loader.calls == 2 and other[0].prompt == "other 0"
    load_dataset(_spec(loader), use_cache=False)
    assert loader.calls == 3


def test_corrupt_cache_is_rebuilt(tmp_cache: Path) -> None:
    loader = _CountingLoader()
    load_dataset(_spec(loader))
    (cached,) = (tmp_cache / "datasets").glob("toy-1-*.json")
    cached.write_text('{"format": 1, "kind": "instruction", "records": [{"id": "t0"')
    again = load_dataset(_spec(loader))
    assert loader.calls == 2 and len(again) == 50


def test_limit_is_a_seeded_nested_subsample_in_order(tmp_cache: Path) -> None:
    spec = _spec(_CountingLoader(100))
    small = [r.id for r in load_dataset(spec, limit=10, seed=1)]
    big = [r.id for r in load_dataset(spec, limit=30, seed=1)]
    assert len(small) == 10 and set(small) <= set(big)
    assert small == sorted(small, key=lambda s: int(s[1:]))
    assert small != [r.id for r in load_dataset(spec, limit=10, seed=2)]
    assert len(load_dataset(spec, limit=1000)) == 100


@pytest.mark.parametrize("limit", [0, -3, 2.5])
def test_bad_limit(tmp_cache: Path, limit) -> None:
    with pytest.raises(ConfigError, match="limit"):
        load_dataset(_spec(_CountingLoader()), limit=limit)


def test_split_then_limit(tmp_cache: Path) -> None:
    spec = _spec(_CountingLoader(400))
    test = load_dataset(spec, split="test", seed=0)
    limited = load_dataset(spec, split="test", seed=0, limit=20)
    assert len(limited) == 20 and {r.id for r in limited} <= {r.id for r in test}
    assert limited.info.split == "test"
    custom = load_dataset(spec, split="fit", fractions={"fit": 0.7, "eval": 0.3})
    assert custom.info.split == "fit"


def test_unknown_split(tmp_cache: Path) -> None:
    with pytest.raises(ConfigError, match="unknown split 'validation'") as info:
        load_dataset(_spec(_CountingLoader()), split="validation")
    assert "train, val, test" in info.value.fix


def test_empty_dataset_and_empty_split(tmp_cache: Path) -> None:
    with pytest.raises(EmptyDatasetError):
        load_dataset(_spec(_CountingLoader(0)))
    with pytest.raises(EmptyDatasetError, match="split 'val'"):
        load_dataset(_spec(_CountingLoader(1), name="one"), split="val", fractions={"train": 1.0, "val": 0.0})


def test_list_datasets_without_counting_is_instant(tmp_cache: Path) -> None:
    infos = {info.name: info for info in list_datasets(count=False)}
    assert set(infos) >= EXPECTED_NAMES
    assert all(info.n is None for info in infos.values())  # nothing cached in a fresh cache


def _jsonl(path: Path, rows: list[dict]) -> str:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"jsonl:{path}"


def test_union_of_datasets_keeps_each_prompt_once_and_its_split(tmp_path: Path) -> None:
    from refusal_steer.data.splits import assign_split

    a = _jsonl(tmp_path / "a.jsonl", [{"id": f"x{i}", "prompt": f"Harmful request number {i}."} for i in range(60)])
    b = _jsonl(tmp_path / "b.jsonl", [{"id": f"x{i}", "prompt": f"harmful request number {i}"} for i in range(50, 90)])
    union = load_dataset(f"{a}+{b}")
    assert len(union) == 90 and union.info.kind == "instruction" and "duplicates dropped" in union.info.description
    assert [r.prompt for r in union[:60]] == [f"Harmful request number {i}." for i in range(60)]  # the first occurrence wins
    assert len({r.id for r in union}) == 90  # b's ids x60..x89 collide with a's and are prefixed
    for split in ("train", "val", "test"):
        part = load_dataset(f"{a}+{b}", split=split, seed=3)
        assert all(assign_split(r.prompt, seed=3) == split for r in part)
    plus = _jsonl(tmp_path / "b+c.jsonl", [{"prompt": "One."}, {"prompt": "Two."}])
    assert len(load_dataset(plus)) == 2  # a user file whose path holds a '+' is still one file


def test_union_errors_name_the_fix(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"prompt": "Say hi."}])
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    with pytest.raises(ConfigError, match="different kinds"):
        load_dataset(f"{a}+{chat}")
    with pytest.raises(ConfigError, match="options"):
        load_dataset(f"{a}+{a}x", column="text")
    with pytest.raises(ConfigError, match="empty or repeated"):
        load_dataset(f"{a}+{a}")
    with pytest.raises(DatasetNotFoundError):
        load_dataset(f"{a}+no-such-dataset")
