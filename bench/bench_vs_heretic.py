"""refusal-steer against heretic (p-e-w/heretic, ``heretic-llm`` 1.4.0) on the default model: same test prompts, same judges.

heretic removes refusal by abliteration: a rank-1 LoRA edit of ``o_proj`` and ``down_proj`` along per-layer
difference-in-means directions, with per-component layer-weight kernels searched by Optuna (TPE, two
objectives: KL divergence on harmless prompts and the refusal count on harmful ones). This bench:

1. writes OUR train prompts (``load_prompts("advbench"|"harmless", split="train", limit=128)``) as local
   parquet datasets for heretic's ``good_prompts``/``bad_prompts``, and held-out *evaluation* prompts for its
   optimiser that never touch our test split: 100 harmless validation prompts and 100 harmful ones (all 40 of
   AdvBench's validation split plus 60 train prompts not among the 128). heretic's defaults are 400 train
   prompts per class and 100 evaluation prompts per class.
2. runs heretic on the dequantised default model folder (float32 safetensors), offline (``HF_HUB_OFFLINE=1``,
   ``HF_DATASETS_OFFLINE=1``), with its own defaults except: the number of trials (cut to the time budget, see
   below), ``n_startup_trials`` (heretic's 30% share of them instead of a fixed 60), ``batch_size = 64`` (its
   automatic search would generate 100 tokens twice at batch sizes 1 to 128), ``response_prefix = ""`` (the
   model has no thinking block; the automatic check would generate 200 answers of 100 tokens),
   ``dtypes = ["float32"]`` (the folder's dtype, as our evaluation uses), ``seed = 0`` and
   ``export_strategy = "merge"``; heretic keeps its own system prompt ("You are a helpful assistant.") for its
   search, while step 3 scores every condition with the model's template default. ``bench/_heretic_driver.py`` answers heretic's menus: it picks the
   Pareto-front trial with the fewest refusals whose KL is at most ``--kl-max`` (0.1, the ceiling
   ``refusal-steer compare`` calibrates its latent steer to) and saves the merged model; nothing is uploaded.
3. scores, on the held-out test prompts (AdvBench test and harmless test, ``--limit`` each, the ones
   ``refusal-steer compare`` uses), with ``compare``'s generation settings (greedy, 32 new tokens, generation
   batches of 32, the model's own chat template and system prompt): the unmodified model, our refined
   direction ablated at every residual write (``ablate:docs/measured/2026-12-02/direction``), our calibrated
   latent clamp (``latents:docs/measured/2026-12-02/features``), and heretic's saved model loaded with
   ``refusal_steer.models.load_model`` (safetensors, no remote code). Each gets harmful and harmless refusal
   under both judges (``substring`` and ``ngram-lr``, Wilson CIs) and the harmless next-token KL from the
   unmodified model (``KL(P_base || P)`` at the last prompt position, bootstrap CI; for heretic's model the
   base distributions come from the original model in the same process).

Time budget: ``--minutes`` (60) is the wall-clock budget of the heretic run. The driver times trial 1 and then
runs ``1 + (budget - elapsed - 4 min for saving) // (time of trial 1)`` trials; ``--trials N`` fixes N
instead. Both the measured trial time and the resulting budget are printed and stored. heretic keeps its
Optuna study in ``WORK/heretic/checkpoints`` (a journal file), so rerunning the same command continues an
interrupted study; ``--skip-heretic`` reuses the saved model in ``WORK/heretic/model``; scored cells are stored
in ``WORK/cells`` and not recomputed.

heretic runs in its own venv (it pins transformers ~=5.6, huggingface-hub ~=1.7, datasets ~=4.7, optuna,
peft, bitsandbytes and lm-eval, and it is AGPL-3.0), so it is not in the ``bench`` extra. Install it with
the CPU torch first, so pip never pulls the CUDA wheels::

    python -m venv /tmp/heretic-env
    /tmp/heretic-env/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
    echo torch==2.13.0 > /tmp/constraints.txt
    /tmp/heretic-env/bin/pip install -c /tmp/constraints.txt heretic-llm==1.4.0

Run (the project's own environment, 2-core CPU)::

    PYTHONPATH=src python bench/bench_vs_heretic.py --work runs/heretic-bench --out runs/heretic-bench.json
    # smoke test: 2 trials, 8 heretic evaluation prompts per class, 8 test prompts per class
    PYTHONPATH=src python bench/bench_vs_heretic.py --trials 2 --heretic-eval 8 --limit 8 --work /tmp/hb --out /tmp/hb.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DIRECTION = "docs/measured/2026-12-02/direction"
FEATURES = "docs/measured/2026-12-02/features"
JUDGES = ("substring", "ngram-lr")
N_TRAIN = 128
MAX_NEW_TOKENS = 32  # CompareConfig.max_new_tokens
GENERATION_BATCH = 32  # CompareConfig.generation_batch_size
KL_BATCH = 8  # CompareConfig.batch_size
SEED = 0


# ---------------------------------------------------------------- memory


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark (Linux ``clear_refs`` 5); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    """This process's resident high-water mark (``VmHWM``) in kB, since start or the last :func:`_reset_peak`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- prompts and heretic


def _default_model_dir() -> Path:
    """The dequantised float32 safetensors folder of the default model (written by the first ``load_model("default")``)."""
    from refusal_steer.models.default import GGUF_SHA256, default_gguf_path, dequantised_dir, dequantised_is_complete

    folder = dequantised_dir(default_gguf_path(), GGUF_SHA256)
    if not dequantised_is_complete(folder, GGUF_SHA256):
        from refusal_steer.models import load_model

        load_model("default")  # the first load writes the folder
    return folder


def _prompt_sets(heretic_eval: int) -> dict[str, list[str]]:
    """heretic's four prompt sets, none of them from our test split (see the module docstring)."""
    from refusal_steer.data import load_prompts

    bad_train = load_prompts("advbench", split="train", limit=N_TRAIN)
    good_train = load_prompts("harmless", split="train", limit=N_TRAIN)
    used = set(bad_train)
    bad_spare = [p for p in load_prompts("advbench", split="train", limit=None) if p not in used]
    bad_eval = (load_prompts("advbench", split="val", limit=None) + bad_spare)[:heretic_eval]
    good_eval = load_prompts("harmless", split="val", limit=heretic_eval)
    return {"bad_train": bad_train, "good_train": good_train, "bad_eval": bad_eval, "good_eval": good_eval}


def _write_dataset(folder: Path, prompts: list[str]) -> None:
    """A local dataset heretic reads with ``datasets.load_dataset(folder, split="train")``: one parquet file, column ``text``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": prompts}), folder / "train.parquet")


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_heretic_config(work: Path, model_dir: Path, sets: dict[str, list[str]], trials: int) -> Path:
    """Write the prompt datasets and ``config.toml`` heretic reads from its working directory."""
    work.mkdir(parents=True, exist_ok=True)
    for name, prompts in sets.items():
        _write_dataset(work / "prompts" / name, prompts)
    spec = {"good_prompts": "good_train", "bad_prompts": "bad_train",
            "good_evaluation_prompts": "good_eval", "bad_evaluation_prompts": "bad_eval"}
    lines = [
        f"model = {_toml_str(str(model_dir))}",
        'dtypes = ["float32"]',
        "batch_size = 64",
        'response_prefix = ""',
        'export_strategy = "merge"',
        "seed = 0",
        # heretic's default is 200; with --trials 0 the driver stops the study when the budget is spent.
        f"n_trials = {trials if trials else 200}",
        'study_checkpoint_dir = "checkpoints"',
    ]
    for field, name in spec.items():
        lines += ["", f"[{field}]", f"dataset = {_toml_str(str((work / 'prompts' / name).resolve()))}", 'split = "train"', 'column = "text"']
    path = work / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_heretic(args: argparse.Namespace, work: Path, model_dir: Path) -> dict[str, Any]:
    """Run heretic through the driver in its own venv; return the driver's record."""
    sets = _prompt_sets(args.heretic_eval)
    write_heretic_config(work, model_dir, sets, args.trials)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # heretic's interpreter must not see the project's packages
    command = [args.heretic_python, str(HERE / "_heretic_driver.py"), "--work", str(work.resolve()), "--save",
               str((work / "model").resolve()), "--budget-s", str(args.minutes * 60), "--trials", str(args.trials),
               "--kl-max", str(args.kl_max)]
    print("$ " + " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, env=env, check=True)
    record = json.loads((work / "heretic-run.json").read_text())
    record["bench_wall_s"] = time.time() - started
    record["prompts"] = {name: len(prompts) for name, prompts in sets.items()}
    (work / "heretic-run.json").write_text(json.dumps(record, indent=2))  # so --skip-heretic reports the same
    return record


# ---------------------------------------------------------------- scoring


def _rate(rate: Any) -> dict[str, Any]:
    return {"value": rate.value, "lo": rate.lo, "hi": rate.hi, "n": rate.n, "k": rate.k, "method": rate.method}


def score_condition(lm: Any, name: str, steer: list[Any], harmful: list[str], harmless: list[str], *,
                    base_logprobs: Any = None) -> dict[str, Any]:
    """Refusal under both judges on both classes and harmless KL from the unmodified model, for one condition."""
    from refusal_steer.evaluation.judges import get_judge
    from refusal_steer.evaluation.kl import evaluate_kl
    from refusal_steer.evaluation.refusal import judge_completions
    from refusal_steer.evaluation.stats import mean_with_ci, rate_from_bools
    from refusal_steer.generation import generate

    judges = {j: get_judge(j) for j in JUDGES}  # fail on a missing judge before generating
    peak_reset = _reset_peak()
    started = time.time()
    cell: dict[str, Any] = {"condition": name, "refusal": {}, "completions": {}}
    for cls, prompts in (("harmful", harmful), ("harmless", harmless)):
        completions = generate(lm, prompts, steer, max_new_tokens=MAX_NEW_TOKENS, batch_size=GENERATION_BATCH, progress=False)
        texts = [c.text for c in completions]
        cell["completions"][cls] = texts
        cell["refusal"][cls] = {}
        for judge_name, judge in judges.items():
            refused = judge_completions(judge, prompts, texts)
            cell["refusal"][cls][judge_name] = _rate(rate_from_bools(refused, seed=SEED)) | {"judge": f"{judge.name}@{judge.version}"}
    if base_logprobs is None:
        kl = evaluate_kl(lm, harmless, steer, batch_size=KL_BATCH, seed=SEED)
        per_prompt, mean = kl.per_prompt, kl.mean
    else:
        from refusal_steer.scoring import next_token_logprobs

        logprobs = next_token_logprobs(lm, harmless, (), batch_size=KL_BATCH)
        per_prompt = [float(x) for x in (base_logprobs.exp() * (base_logprobs - logprobs)).sum(-1).clamp_min(0)]
        mean = mean_with_ci(per_prompt, seed=SEED)
    cell["kl"] = _rate(mean) | {"per_prompt": per_prompt}
    cell["seconds"] = time.time() - started
    cell["peak_rss_kb"] = _peak_kb()
    cell["peak_rss_scope"] = "this condition (VmHWM reset before it)" if peak_reset else "whole process so far"
    return cell


def _cached(cells: Path, name: str, key: dict[str, Any], compute: Any) -> dict[str, Any]:
    path = cells / f"{name}.json"
    if path.is_file():
        cell = json.loads(path.read_text())
        if cell.get("key") == key:
            print(f"[{name}] reused {path}", flush=True)
            return cell
    cell = compute() | {"key": key}
    cells.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=1))
    return cell


def score_all(args: argparse.Namespace, work: Path, heretic_dir: Path) -> list[dict[str, Any]]:
    """Score the unmodified model, our two steers and heretic's model on the same test prompts."""
    import torch

    from refusal_steer.data import load_prompts
    from refusal_steer.interventions import parse_steer
    from refusal_steer.models import load_model
    from refusal_steer.scoring import next_token_logprobs

    harmful = load_prompts("advbench", split="test", limit=args.limit, seed=SEED)
    harmless = load_prompts("harmless", split="test", limit=args.limit, seed=SEED)
    cells_dir = work / "cells"
    key = {"limit": args.limit, "max_new_tokens": MAX_NEW_TOKENS, "n_harmful": len(harmful), "n_harmless": len(harmless)}
    cells = []
    loaded: list[Any] = []  # the original model, loaded on first need (a resumed run may need none of it)

    def original() -> Any:
        if not loaded:
            loaded.append(load_model("default"))
        return loaded[0]

    for name, spec in (("baseline", "none"), ("ours-ablate", f"ablate:{args.direction}"), ("ours-latents", f"latents:{args.features}")):
        print(f"[{name}] {spec}: {len(harmful)} harmful + {len(harmless)} harmless prompts", flush=True)
        cell = _cached(cells_dir, name, key | {"steer": spec},
                       lambda: score_condition(original(), name, parse_steer(spec, original()), harmful, harmless))
        cells.append(cell | {"steer": spec})
    base_path = cells_dir / "base-logprobs.pt"
    if not base_path.is_file():
        torch.save(next_token_logprobs(original(), harmless, (), batch_size=KL_BATCH), base_path)
    loaded.clear()
    base_logprobs = torch.load(base_path, weights_only=True)
    if base_logprobs.shape[0] != len(harmless):
        raise SystemExit(f"{base_path} holds {base_logprobs.shape[0]} prompts, not {len(harmless)}: delete it and rerun")
    print(f"[heretic] {heretic_dir}", flush=True)
    heretic_key = key | {"model": str(heretic_dir), "config_mtime": (heretic_dir / "config.json").stat().st_mtime}

    def heretic_cell() -> dict[str, Any]:
        hlm = load_model(heretic_dir)
        try:
            return score_condition(hlm, "heretic", [], harmful, harmless, base_logprobs=base_logprobs)
        finally:
            del hlm

    cells.append(_cached(cells_dir, "heretic", heretic_key, heretic_cell) | {"steer": f"model:{heretic_dir}"})
    return cells


# ---------------------------------------------------------------- report


def _fmt(rate: dict[str, Any], pct: bool = True) -> str:
    if pct:
        return f"{100 * rate['value']:.0f}% [{100 * rate['lo']:.0f}, {100 * rate['hi']:.0f}]"
    return f"{rate['value']:.4f} [{rate['lo']:.4f}, {rate['hi']:.4f}]"


def table(cells: list[dict[str, Any]]) -> str:
    """Markdown table: refusal under both judges, KL, ratios to the unmodified model and to our ablation, time, peak."""
    by = {c["condition"]: c for c in cells}
    base, ours = by["baseline"], by["ours-ablate"]
    rows = ["| condition | harmful refusal, substring | ngram-lr | ÷ baseline (substring) | harmless refusal, substring | ngram-lr "
            "| harmless KL (nats) | KL ÷ ours-ablate | scoring s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        h, g = c["refusal"]["harmful"], c["refusal"]["harmless"]
        b = base["refusal"]["harmful"]["substring"]["value"]
        ratio = f"{h['substring']['value'] / b:.2f}" if b else "n/a"
        kl_ratio = f"{c['kl']['value'] / ours['kl']['value']:.2f}" if ours["kl"]["value"] > 0 and c["condition"] != "baseline" else "n/a"
        rows.append(f"| {c['condition']} | {_fmt(h['substring'])} | {_fmt(h['ngram-lr'])} | {ratio} | {_fmt(g['substring'])} | "
                    f"{_fmt(g['ngram-lr'])} | {_fmt(c['kl'], pct=False)} | {kl_ratio} | {c['seconds']:.0f} | {c['peak_rss_kb'] / 1024:.0f} |")
    n_h, n_g = base["refusal"]["harmful"]["substring"]["n"], base["refusal"]["harmless"]["substring"]["n"]
    rows.append(f"\nn = {n_h} AdvBench test + {n_g} harmless test prompts; greedy, {MAX_NEW_TOKENS} new tokens; Wilson 95% CIs for "
                "rates, bootstrap for KL.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/heretic-bench"), help="working folder (prompts, heretic run, model, cells)")
    parser.add_argument("--out", type=Path, default=None, help="JSON with everything (default WORK/bench.json)")
    parser.add_argument("--trials", type=int, default=0, help="heretic trials (0: as many as --minutes allows after timing trial 1)")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of the heretic run")
    parser.add_argument("--heretic-eval", type=int, default=100, help="heretic's evaluation prompts per class (its default 100)")
    parser.add_argument("--kl-max", type=float, default=0.1, help="highest KL of the heretic trial chosen from its Pareto front")
    parser.add_argument("--limit", type=int, default=100, help="test prompts per class")
    parser.add_argument("--skip-heretic", action="store_true", help="reuse the saved model in WORK/heretic/model")
    parser.add_argument("--heretic-python", default="/tmp/heretic-env/bin/python", help="the interpreter of heretic's venv")
    parser.add_argument("--direction", default=DIRECTION, help="our direction folder (ablate:DIR)")
    parser.add_argument("--features", default=FEATURES, help="our features folder (latents:FDIR)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = args.work
    out = args.out or work / "bench.json"
    heretic_work = work / "heretic"
    heretic_dir = heretic_work / "model"
    started = time.time()
    model_dir = _default_model_dir()
    if args.skip_heretic:
        if not (heretic_dir / "config.json").is_file():
            raise SystemExit(f"--skip-heretic: no saved heretic model in {heretic_dir}")
        run_json = heretic_work / "heretic-run.json"
        heretic_record = json.loads(run_json.read_text()) if run_json.is_file() else {}
        heretic_record["reused"] = True
    else:
        heretic_record = run_heretic(args, heretic_work, model_dir)
    chosen = heretic_record.get("chosen") or {}
    print(f"[heretic] trial 1: {heretic_record.get('first_trial_s', float('nan')):.0f} s; "
          f"{len(heretic_record.get('trials', []))} trials in {heretic_record.get('wall_s', float('nan')) / 60:.1f} min "
          f"(budget {args.minutes:.0f} min); peak RSS {heretic_record.get('peak_rss_kb', 0) / 1024:.0f} MiB; "
          f"chosen: trial {chosen.get('index')} with {chosen.get('refusals')}/{chosen.get('n_bad_prompts')} refusals, "
          f"KL {chosen.get('kl_divergence', float('nan')):.4f} ({heretic_record.get('chosen_rule')})", flush=True)
    cells = score_all(args, work, heretic_dir)
    text = table(cells) + (
        f"\nheretic run: {len(heretic_record.get('trials', []))} trials (trial 1 {heretic_record.get('first_trial_s', float('nan')):.0f} s, "
        f"set-up {heretic_record.get('setup_s', float('nan')):.0f} s), {heretic_record.get('wall_s', float('nan')) / 60:.1f} min wall in a "
        f"{heretic_record.get('budget_s', float('nan')) / 60:.0f} min budget, peak RSS {heretic_record.get('peak_rss_kb', 0) / 1024:.0f} MiB; "
        f"its own evaluation on {heretic_record.get('prompts', {}).get('bad_eval', '?')} harmful + "
        f"{heretic_record.get('prompts', {}).get('good_eval', '?')} harmless prompts: chosen trial {chosen.get('index')} "
        f"({chosen.get('refusals')}/{chosen.get('n_bad_prompts')} refusals, KL {chosen.get('kl_divergence', float('nan')):.4f}), base refusals "
        f"{heretic_record.get('base_refusals')}")
    print(text, flush=True)
    import importlib.metadata as md

    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "model_dir": str(model_dir),
        "generation": {"max_new_tokens": MAX_NEW_TOKENS, "greedy": True, "batch_size": GENERATION_BATCH, "kl_batch_size": KL_BATCH},
        "heretic": heretic_record,
        "cells": cells,
        "table": text,
        "wall_s": time.time() - started,
        "versions": {"refusal-steer": md.version("refusal-steer") if _installed("refusal-steer") else "source", "torch": torch.__version__},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}", flush=True)


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
