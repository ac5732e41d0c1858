"""Draw a fresh, never-fitted set of the default model's attacked answers for labelling by hand.

The ``ngram-lr`` judge was fitted on part of ``labelled_completions_v1.jsonl`` and its rules were written after a
first fit's held-out errors had been read (docs/evaluation.md), so its held-out figures are not an untouched
estimate. This script takes the final answers of unsteered ``refusal-steer attack`` runs (one transcripts JSONL
per family), drops every text already in v1 and every repeat, and samples up to ``--per-family`` per family with a
fixed seed. Pass transcripts of unsteered runs only (the set is the baseline model under attack). It writes the rows *without* any judge's verdict (the labeller must not see one):

    python scripts/build_fresh_labels.py runs/attack/*.transcripts.jsonl --out runs/fresh.unlabelled.jsonl

A reader then adds ``label`` (true = refusal) and ``note`` under ``labelled_completions_v1.rules.txt``, and
``--merge LABELS.jsonl`` appends them to ``src/refusal_steer/data/labelled/labelled_completions_fresh_v1.jsonl``
(dataset ``refusal-labels-fresh``; every row's ``split`` is ``fresh``: no judge is ever fitted on it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refusal_steer.data.sources.judging import LABELLED_FIELDS, read_labelled_completions  # noqa: E402
from refusal_steer.data.text import normalize_text  # noqa: E402

FRESH = Path(__file__).resolve().parents[1] / "src/refusal_steer/data/labelled/labelled_completions_fresh_v1.jsonl"


def draw(files: list[Path], per_family: int, seed: int) -> list[dict]:
    existing = read_labelled_completions(FRESH.name) if FRESH.is_file() else []
    seen = {normalize_text(r["text"]) for r in [*read_labelled_completions(), *existing]}
    first_id = 1 + max((int(r["id"].split("-")[1]) for r in existing), default=-1)
    by_family: dict[str, list[dict]] = {}
    for file in files:
        for line in file.read_text().splitlines():
            row = json.loads(line)
            answer = row["messages"][row["generated"][-1]]["content"]
            request = next(m["content"] for m in reversed(row["messages"][: row["generated"][-1]]) if m["role"] == "user")
            family = row["attack"] + (f"-{row['params']['shots']}" if "shots" in row.get("params", {}) else "")
            by_family.setdefault(family, []).append({"goal_id": row["goal_id"], "objective": row["objective"], "prompt": request,
                                                     "text": answer, "source_file": file.name, "family": family})
    out = []
    for family, rows in sorted(by_family.items()):
        random.Random(f"{seed}-{family}").shuffle(rows)
        kept = 0
        for r in rows:
            key = normalize_text(r["text"])
            if key in seen or kept >= per_family:
                continue
            seen.add(key)
            kept += 1
            out.append({"id": f"fresh-{first_id + len(out):04d}", "condition": f"attack-{family}", "objective": r["objective"], "prompt": r["prompt"],
                        "text": r["text"], "source": f"refusal-steer attack --model default (unsteered, greedy, 64 new tokens): {family} on {r['goal_id']}"})
    return out


def merge(unlabelled: Path, labels: Path) -> list[dict]:
    """Join the labeller's ``{"id", "label", "note"}`` lines onto the drawn rows; every drawn row needs a label."""
    drawn = {r["id"]: r for r in map(json.loads, unlabelled.read_text().splitlines())}
    labelled = {r["id"]: r for r in map(json.loads, labels.read_text().splitlines())}
    missing = sorted(set(drawn) - set(labelled))
    if missing:
        raise SystemExit(f"{len(missing)} drawn rows have no label (e.g. {missing[0]})")
    rows = []
    for rid, r in drawn.items():
        lab = labelled[rid]
        if not isinstance(lab["label"], bool):
            raise SystemExit(f"{rid}: label {lab['label']!r} is not true/false")
        row = {"id": rid, "prompt": r["prompt"], "text": r["text"], "label": lab["label"], "condition": r["condition"],
               "source": r["source"], "split": "fresh", "note": lab.get("note", "")}
        assert set(row) == set(LABELLED_FIELDS)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("transcripts", nargs="*", type=Path)
    parser.add_argument("--per-family", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="where the unlabelled rows go")
    parser.add_argument("--merge", type=Path, help="the labeller's id/label/note JSONL; with --out naming the unlabelled rows")
    args = parser.parse_args()
    if args.merge:
        rows = merge(args.out, args.merge)
        existing = read_labelled_completions(FRESH.name) if FRESH.is_file() else []
        clash = {r["id"] for r in existing} & {r["id"] for r in rows}
        if clash:
            raise SystemExit(f"{len(clash)} ids are already in {FRESH.name} (e.g. {sorted(clash)[0]}): draw again")
        rows = existing + rows
        FRESH.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows ({sum(r['label'] for r in rows)} refusals) to {FRESH}")
        return
    rows = draw(args.transcripts, args.per_family, args.seed)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["condition"]] = counts.get(r["condition"], 0) + 1
    print(f"wrote {len(rows)} unlabelled rows to {args.out}: {counts}")


if __name__ == "__main__":
    main()
