"""Material for validating refusal judges: human-labelled responses and refusal marker phrases."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from importlib import resources

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
#: The default model's own completions, labelled by hand under ``labelled_completions_v1.rules.txt`` (shipped in the package).
LABELLED_COMPLETIONS = "labelled_completions_v1.jsonl"
#: A later set under the same rules, drawn from attacked answers and labelled by a second reader: never fitted on.
FRESH_LABELLED_COMPLETIONS = "labelled_completions_fresh_v1.jsonl"
LABELLED_FIELDS = ("id", "prompt", "text", "label", "condition", "source", "split", "note")


def labelled_completions_text(name: str = LABELLED_COMPLETIONS) -> str:
    """The raw text of a shipped labelled-completions file (``data/labelled/NAME``)."""
    return resources.files("refusal_steer.data").joinpath("labelled", name).read_text(encoding="utf-8")


def read_labelled_completions(name: str = LABELLED_COMPLETIONS) -> list[dict]:
    """The rows of a shipped labelled-completions file, each with exactly :data:`LABELLED_FIELDS`.

    Raises:
        CorruptFileError: a line is not JSON, lacks a field, or its label is not a boolean.
    """
    rows = []
    for number, line in enumerate(labelled_completions_text(name).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{name}:{number} is not JSON: {exc}", fix="restore the file from git") from exc
        if set(row) != set(LABELLED_FIELDS) or not isinstance(row["label"], bool):
            raise CorruptFileError(f"{name}:{number} has fields {sorted(row)} (label {row.get('label')!r})",
                                   fix=f"each line needs exactly {LABELLED_FIELDS}, label true/false")
        rows.append(row)
    return rows


def _labelled_version(name: str = LABELLED_COMPLETIONS) -> str:
    # The cache key follows the file's content, so an edited file is never served from a stale cache.
    try:
        return "1-" + hashlib.sha256(labelled_completions_text(name).encode()).hexdigest()[:12]
    except FileNotFoundError:  # a broken install: loading the dataset then names the missing file
        return "1-missing"


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


@dataset(
    "refusal-labels-default",
    kind="labelled_response",
    license="completions of Qwen2.5-Coder-0.5B-Instruct (Apache-2.0) to AdvBench (MIT) and Alpaca-style (CC BY-NC 4.0) prompts; labels: this project",
    source=f"refusal_steer/data/labelled/{LABELLED_COMPLETIONS}",
    description="the default model's own completions (baseline, steered, jailbreak-wrapped) with a hand refusal label (1 = refusal)",
    version=_labelled_version(),
)
def load_default_model_labels() -> list[LabelledResponse]:
    """The shipped labelled completions of the default model (rules: ``labelled_completions_v1.rules.txt``)."""
    return [LabelledResponse(r["id"], r["prompt"], r["text"], int(r["label"])) for r in read_labelled_completions()]


@dataset(
    "refusal-labels-fresh",
    kind="labelled_response",
    license="completions of Qwen2.5-Coder-0.5B-Instruct (Apache-2.0) to attacked AdvBench (MIT) goals; labels: this project",
    source=f"refusal_steer/data/labelled/{FRESH_LABELLED_COMPLETIONS}",
    description="the default model's unsteered answers under jailbreak attacks, labelled by a second reader under the v1 rules; no judge is fitted on it",
    version=_labelled_version(FRESH_LABELLED_COMPLETIONS),
)
def load_fresh_labels() -> list[LabelledResponse]:
    """The fresh labelled set (``split`` ``fresh``): an untouched check of judges fitted on ``refusal-labels-default``."""
    return [LabelledResponse(r["id"], r["prompt"], r["text"], int(r["label"])) for r in read_labelled_completions(FRESH_LABELLED_COMPLETIONS)]
