"""Content-hash splits: disjoint, deterministic, stable across datasets, sized as asked."""

from __future__ import annotations

import pytest

from refusal_steer.data import DEFAULT_FRACTIONS, Dataset, DatasetInfo, Instruction, assign_split, split_dataset
from refusal_steer.data.text import normalize_text
from refusal_steer.errors import ConfigError


def _dataset(prompts: list[str], name: str = "toy") -> Dataset:
    info = DatasetInfo(name, "instruction", None, "CC0", "inline", "toy")
    return Dataset([Instruction(f"{name}-{i}", p) for i, p in enumerate(prompts)], info)


PROMPTS = [f"Instruction number {i}: do thing {i * 7 % 13}" for i in range(4000)]


def test_splits_are_disjoint_and_cover_everything() -> None:
    parts = split_dataset(_dataset(PROMPTS), seed=0)
    assert list(parts) == ["train", "val", "test"]
    ids = [set(r.id for r in part) for part in parts.values()]
    assert sum(len(s) for s in ids) == len(PROMPTS)
    assert set.union(*ids) == {f"toy-{i}" for i in range(len(PROMPTS))}
    for part_name, part in parts.items():
        assert part.info.split == part_name
        assert [r.id for r in part] == sorted((r.id for r in part), key=lambda s: int(s.split("-")[1]))


def test_splits_are_deterministic_and_seed_dependent() -> None:
    a = {k: [r.id for r in v] for k, v in split_dataset(_dataset(PROMPTS), seed=3).items()}
    b = {k: [r.id for r in v] for k, v in split_dataset(_dataset(PROMPTS), seed=3).items()}
    c = {k: [r.id for r in v] for k, v in split_dataset(_dataset(PROMPTS), seed=4).items()}
    assert a == b
    assert a != c


@pytest.mark.parametrize("fractions", [DEFAULT_FRACTIONS, {"train": 0.8, "test": 0.2}, {"a": 0.3, "b": 0.3, "c": 0.4}])
def test_fractions_are_roughly_right(fractions: dict[str, float]) -> None:
    parts = split_dataset(_dataset(PROMPTS), seed=0, fractions=fractions)
    for name, frac in fractions.items():
        # 4000 draws: the binomial standard deviation is at most 0.8 points; allow 4 sigma.
        assert abs(len(parts[name]) / len(PROMPTS) - frac) < 0.032


def test_same_prompt_lands_in_same_split_across_datasets() -> None:
    """AdvBench and a curated list share prompts: a shared prompt must never be train here and test there."""
    shared = PROMPTS[:500]
    first = _dataset(shared + [f"only in first {i}" for i in range(300)], "first")
    # Same prompts with different case/punctuation/spacing, in another order, among other prompts.
    variants = [f"  {p.upper()}!! " for p in reversed(shared)]
    second = _dataset([f"only in second {i}" for i in range(300)] + variants, "second")
    split_of_first = {
        normalize_text(r.prompt): name for name, part in split_dataset(first, seed=1).items() for r in part
    }
    for name, part in split_dataset(second, seed=1).items():
        for record in part:
            key = normalize_text(record.prompt)
            if key in split_of_first:
                assert split_of_first[key] == name


def test_train_and_test_never_share_text_even_with_duplicates() -> None:
    prompts = PROMPTS[:200] + [p.lower() for p in PROMPTS[:200]]
    parts = split_dataset(_dataset(prompts), seed=0)
    train = {normalize_text(r.prompt) for r in parts["train"]}
    test = {normalize_text(r.prompt) for r in parts["test"]}
    assert train and test and not train & test


def test_assign_split_ignores_case_and_punctuation() -> None:
    assert assign_split("How do I bake bread?", seed=5) == assign_split("how do i bake BREAD", seed=5)


@pytest.mark.parametrize(
    "fractions, match",
    [
        ({"train": 0.5, "test": 0.4}, "sum to"),
        ({"train": 1.2, "test": -0.2}, "outside"),
        ({"train": "half", "test": 0.5}, "not a number"),
        ({}, "no split"),
        ({"": 1.0}, "non-empty"),
        ({"train": float("nan"), "test": 1.0}, "outside"),
    ],
)
def test_bad_fractions_raise(fractions: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        split_dataset(_dataset(PROMPTS[:10]), fractions=fractions)


def test_zero_fraction_gives_empty_split() -> None:
    parts = split_dataset(_dataset(PROMPTS[:100]), fractions={"train": 1.0, "val": 0.0, "test": 0.0})
    assert len(parts["train"]) == 100 and len(parts["val"]) == 0 and len(parts["test"]) == 0
