"""Run heretic (p-e-w/heretic, ``heretic-llm``) without a terminal: answer its menus, stop at a time budget, save.

Run by ``bench/bench_vs_heretic.py`` with the interpreter of heretic's own venv (it imports only heretic and
its dependencies, never refusal_steer). heretic reads every setting from ``config.toml`` in the working
directory (``WORK``), which the bench script writes; this driver only replaces heretic's interactive
prompts (questionary) with fixed answers:

- an interrupted study in ``WORK/checkpoints`` (heretic's own Optuna journal): continue it;
- "Which trial do you want to use?": the Pareto-front trial with the fewest refusals whose KL divergence is
  at most ``--kl-max`` (else the one with the lowest KL); the second time, exit;
- "What do you want to do with the decensored model?": save it (merged, safetensors) to ``--save``, then leave.

It also stops the study once the time budget is spent: after the first trial it sets the number of trials
to ``1 + (budget - elapsed - reserve) // (time of trial 1)`` (unless ``--trials`` fixes it), and it sets
Optuna's random start-up trials to heretic's own share of them (60 of 200 = 30%). Everything about the run
(settings, budget, every trial with its times, the Pareto front, the choice) goes to ``WORK/heretic-run.json``.

Usage (what the bench script runs)::

    /tmp/heretic-env/bin/python bench/_heretic_driver.py --work WORK --save WORK/model --budget-s 3600
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

STARTUP_SHARE = 60 / 200  # heretic's defaults: n_startup_trials 60 of n_trials 200
SAVE = "Save the model to a local folder"


def _trial_row(trial: Any) -> dict[str, Any]:
    start, end = trial.datetime_start, trial.datetime_complete
    return {
        "number": trial.number,
        "state": str(trial.state).split(".")[-1],
        "index": trial.user_attrs.get("index"),
        "refusals": trial.user_attrs.get("refusals"),
        "n_bad_prompts": trial.user_attrs.get("n_bad_prompts"),
        "kl_divergence": trial.user_attrs.get("kl_divergence"),
        "values": list(trial.values) if trial.values else None,
        "params": trial.params,
        "seconds": (end - start).total_seconds() if start and end else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder with config.toml; heretic's checkpoints go here")
    parser.add_argument("--save", type=Path, required=True, help="folder for the merged model")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="wall-clock budget of the whole heretic run")
    parser.add_argument("--reserve-s", type=float, default=240.0, help="budget kept for merging and saving the model")
    parser.add_argument("--trials", type=int, default=0, help="fixed number of trials (0: as many as the budget allows)")
    parser.add_argument("--kl-max", type=float, default=0.1, help="highest KL divergence a chosen trial may have")
    args = parser.parse_args()

    started = time.time()
    os.chdir(args.work)
    sys.argv = ["heretic"]  # heretic parses sys.argv: every setting comes from ./config.toml

    import optuna
    from optuna.samplers import TPESampler

    import heretic.main as heretic_main

    record: dict[str, Any] = {"budget_s": args.budget_s, "reserve_s": args.reserve_s, "kl_max": args.kl_max, "trials_fixed": args.trials}
    state: dict[str, Any] = {"trial_menu": 0, "action_menu": 0, "study": None}

    def budget_callback(study: optuna.Study, trial: Any) -> None:
        done = [t for t in study.trials if t.datetime_complete is not None]
        per_trial = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / max(1, len(done))
        record["per_trial_s_mean"] = per_trial
        if "first_trial_s" not in record:
            record["first_trial_s"] = per_trial
            record["setup_s"] = time.time() - started - per_trial
        if args.trials:
            n_trials = args.trials
        else:
            remaining = args.budget_s - (time.time() - started) - args.reserve_s
            n_trials = len(done) + max(0, int(remaining // per_trial))
        if "n_trials" not in record:
            record["n_trials"] = n_trials
            record["n_startup_trials"] = max(1, round(STARTUP_SHARE * n_trials))
            # TPESampler keeps its start-up count in a private field; heretic built it with its default 60.
            if isinstance(study.sampler, TPESampler):
                study.sampler._n_startup_trials = record["n_startup_trials"]
            print(f"[bench] trial 1 took {record.get('first_trial_s', 0):.0f} s after {record.get('setup_s', 0):.0f} s of set-up: "
                  f"running {n_trials} trials ({record['n_startup_trials']} random start-up trials) in a {args.budget_s:.0f} s budget",
                  flush=True)
        if len(done) >= record["n_trials"]:
            study.stop()

    original_optimize = optuna.study.Study.optimize

    def optimize(self: optuna.Study, func: Any, n_trials: int | None = None, **kwargs: Any) -> None:
        state["study"] = self
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [budget_callback]
        if args.trials:
            n_trials = max(0, args.trials - len(self.trials))
        return original_optimize(self, func, n_trials=n_trials, **kwargs)

    optuna.study.Study.optimize = optimize  # type: ignore[method-assign]

    def prompt_select(message: str, choices: list[Any]) -> Any:
        values = [getattr(c, "value", c) for c in choices]
        if message.startswith("How would you like to proceed"):
            return "continue" if "continue" in values else "restart"
        if message.startswith("Which trial"):
            state["trial_menu"] += 1
            if state["trial_menu"] > 1:
                return ""
            front = [v for v in values if not isinstance(v, str)]
            record["pareto_front"] = [_trial_row(t) for t in front]
            within = [t for t in front if t.user_attrs["kl_divergence"] <= args.kl_max]
            chosen = min(within, key=lambda t: (t.user_attrs["refusals"], t.user_attrs["kl_divergence"])) if within else \
                min(front, key=lambda t: t.user_attrs["kl_divergence"])
            record["chosen"] = _trial_row(chosen)
            record["chosen_rule"] = (f"fewest refusals with KL <= {args.kl_max}" if within else
                                     f"no Pareto trial has KL <= {args.kl_max}: the lowest KL")
            return chosen
        if message.startswith("What do you want to do"):
            state["action_menu"] += 1
            return SAVE if state["action_menu"] == 1 else ""
        raise RuntimeError(f"unexpected heretic menu {message!r} with choices {values}")

    def prompt_path(message: str) -> str:
        return str(args.save)

    def prompt_text(message: str, *unused: Any, **unused_kw: Any) -> str:
        raise RuntimeError(f"unexpected heretic text prompt {message!r}")

    heretic_main.prompt_select = prompt_select
    heretic_main.prompt_path = prompt_path
    heretic_main.prompt_text = prompt_text
    heretic_main.prompt_password = prompt_text

    try:
        heretic_main.run()
    finally:
        study = state["study"]
        if study is not None:
            record["trials"] = [_trial_row(t) for t in study.trials]
            record["base_refusals"] = next((t.user_attrs.get("base_refusals") for t in study.trials if t.user_attrs), None)
        record["wall_s"] = time.time() - started
        record["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        record["saved"] = (args.save / "config.json").is_file()
        (args.work / "heretic-run.json").write_text(json.dumps(record, indent=2, default=str))
    if not record["saved"]:
        raise SystemExit(f"heretic did not save a model to {args.save} (see its output above)")


if __name__ == "__main__":
    main()
