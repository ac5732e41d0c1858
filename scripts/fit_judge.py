"""Fit the ``ngram-lr`` refusal judge on the labelled completions and report it beside ``substring`` on held-out rows.

    python scripts/fit_judge.py            # refit, write src/refusal_steer/evaluation/data/ngram_lr_v1.safetensors, print the table
    python scripts/fit_judge.py --check    # refit and check it equals the shipped file (exit 1 if not); writes nothing
    python scripts/fit_judge.py --out W.safetensors --json results.json

The fit is deterministic (hash splits, exact Newton solves, weights rounded to 2^-16): it reproduces the
shipped weights bit for bit. The held-out ``test`` rows are never seen by the fit or its cross-validation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from refusal_steer.evaluation.judge_fit import fit_ngram_lr, format_table, held_out_agreement, labelled_rows
from refusal_steer.evaluation.judges.ngram_lr import NgramLrJudge, content_digest, load_weights, weights_metadata

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "refusal_steer" / "evaluation" / "data" / "ngram_lr_v1.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED, help="where to write the weights")
    parser.add_argument("--check", action="store_true", help="compare the refit with --out instead of writing it")
    parser.add_argument("--json", type=Path, default=None, help="write the held-out figures as JSON here")
    args = parser.parse_args(argv)

    rows = labelled_rows()
    start = time.perf_counter()
    result = fit_ngram_lr(rows)
    seconds = time.perf_counter() - start
    digest = content_digest(result.weights, weights_metadata(result.features, result.threshold, result.meta))
    print(f"fitted on {sum(r.split == 'fit' for r in rows)} rows in {seconds:.1f} s; lambda {result.meta['lambda']}; "
          f"version v1-{digest[:12]}")
    if args.check:
        shipped = load_weights(str(args.out))
        same = np.array_equal(shipped.weights, result.weights) and shipped.sha256 == digest
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'} (shipped v1-{shipped.sha256[:12]})")
        if not same:
            return 1
        judge = NgramLrJudge(str(args.out))
    else:
        result.save(args.out)
        print(f"wrote {args.out}")
        judge = NgramLrJudge(str(args.out))
    results = held_out_agreement([judge, "substring"], rows)
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
