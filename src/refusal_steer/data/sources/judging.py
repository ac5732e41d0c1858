"""Material for validating refusal judges: human-labelled responses and refusal marker phrases."""

from __future__ import annotations

import csv
import io

from ...errors import CorruptFileError
from ..records import LabelledResponse, Text
from ..registry import dataset
from ._pins import OLLAMA_FORGE, PYRIT, Member
from .harmful import text_lines

REFUSAL_LABELS = Member(
    PYRIT,
    "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
    "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7",
)
REFUSAL_MARKERS = Member(OLLAMA_FORGE, "ollama_forge/data/refusal_markers.txt")


@dataset(
    "refusal-labels",
    kind="labelled_response",
    license="MIT (PyRIT)",
    source=REFUSAL_LABELS.source,
    description="model responses with a human refusal label (human_score 1 = refusal), to check a judge's accuracy",
)
def load_refusal_labels() -> list[LabelledResponse]:
    """PyRIT's 105 refusal-scorer examples (the leading ``# dataset_version`` line is skipped)."""
    lines = REFUSAL_LABELS.read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    records = []
    for i, row in enumerate(csv.DictReader(io.StringIO("".join(lines), newline=""))):
        score = (row.get("human_score") or "").strip()
        if score not in ("0", "1"):
            raise CorruptFileError(
                f"{REFUSAL_LABELS.source} row {i}: human_score {score!r} is not 0/1",
                fix="the pinned file changed; report it",
            )
        records.append(
            LabelledResponse(f"refusal-label-{i:03d}", row["objective"], row["assistant_response"], int(score))
        )
    return records


@dataset(
    "refusal-markers",
    kind="text",
    license="unknown (ollama-forge has no licence field)",
    source=REFUSAL_MARKERS.source,
    description="lower-case substrings that signal a refusal (case-insensitive match)",
)
def load_refusal_markers() -> list[Text]:
    """ollama-forge's refusal marker phrases, comments dropped."""
    return [Text(f"marker-{i:02d}", line) for i, line in enumerate(text_lines(REFUSAL_MARKERS.read_text()))]
