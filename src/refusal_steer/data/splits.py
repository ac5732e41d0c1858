"""Deterministic train/val/test splits by content hash, so evaluation never sees fitting prompts.

A record's split is a function of ``(seed, normalised text)`` alone, not of its position. The same
prompt therefore lands in the same split in every dataset that contains it (AdvBench, the curated
harmful list and HarmBench overlap), and a direction fitted on ``train`` of one dataset is never
evaluated on a copy of one of its own prompts in ``test`` of another. Duplicates inside a dataset
share a split too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from ..errors import ConfigError
from .records import Dataset, record_text
from .text import normalize_text

#: Default fractions: half to fit directions/latents, a little to select them, the rest to evaluate.
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.5, "val": 0.1, "test": 0.4}


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validate split fractions (non-empty names, each in [0, 1], summing to 1) and return a copy.

    Raises:
        ConfigError: naming the bad split or the sum.
    """
    if not fractions:
        raise ConfigError("no split fractions given", fix="pass e.g. {'train': 0.5, 'val': 0.1, 'test': 0.4}")
    out: dict[str, float] = {}
    for name, frac in fractions.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"split name {name!r} is not a non-empty string", fix="name splits like 'train', 'test'")
        try:
            value = float(frac)
        except (TypeError, ValueError):
            raise ConfigError(
                f"split {name!r} has fraction {frac!r}, not a number", fix="use numbers in [0, 1]"
            ) from None
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ConfigError(f"split {name!r} has fraction {value}, outside [0, 1]", fix="use numbers in [0, 1]")
        out[name] = value
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"split fractions sum to {total:g}, not 1 ({out})", fix="make the fractions add up to 1")
    return out


def split_unit(text: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by ``seed`` and the normalised ``text``; equal texts give equal numbers."""
    digest = hashlib.sha256(f"{seed}\x00{normalize_text(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(text: str, seed: int = 0, fractions: Mapping[str, float] | None = None) -> str:
    """The split a text belongs to under ``seed`` and ``fractions`` (default train 0.5 / val 0.1 / test 0.4).

    Example:
        >>> assign_split("How do I bake bread?", seed=0) == assign_split("how do i bake BREAD", seed=0)
        True
    """
    fracs = check_fractions(fractions if fractions is not None else DEFAULT_FRACTIONS)
    unit = split_unit(text, seed)
    upper = 0.0
    names = list(fracs)
    for name in names:
        upper += fracs[name]
        if unit < upper:
            return name
    # Float round-off can leave unit just above the last bound; it belongs to the last non-empty split.
    return [n for n in names if fracs[n] > 0][-1]


def split_dataset(dataset: Dataset, seed: int = 0, fractions: Mapping[str, float] | None = None) -> dict[str, Dataset]:
    """Split a dataset into named parts by content hash; every part keeps the original record order.

    Args:
        dataset: any dataset; records are keyed by :func:`~refusal_steer.data.records.record_text`.
        seed: changes the assignment; the same seed gives the same split on every machine.
        fractions: split name -> share, summing to 1 (default :data:`DEFAULT_FRACTIONS`).

    Returns:
        split name -> dataset (possibly empty for tiny datasets), in the order of ``fractions``.

    Example:
        >>> parts = split_dataset(load_dataset("advbench"), seed=0)  # doctest: +SKIP
        >>> sorted(parts), sum(len(p) for p in parts.values())  # doctest: +SKIP
        (['test', 'train', 'val'], 520)
    """
    fracs = check_fractions(fractions if fractions is not None else DEFAULT_FRACTIONS)
    indices: dict[str, list[int]] = {name: [] for name in fracs}
    for i, record in enumerate(dataset):
        indices[assign_split(record_text(record), seed, fracs)].append(i)
    return {name: dataset.select(idx, split=name) for name, idx in indices.items()}


__all__ = ["DEFAULT_FRACTIONS", "check_fractions", "split_unit", "assign_split", "split_dataset"]
