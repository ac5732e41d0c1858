"""The demo's readable report: what was run (model, data, decoding, judge, time), a rates table with n and CIs,
plots, and side-by-side completions that show both what steering changed and where refusal survived it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .plots import plot_rates
from .render import code_block, code_span, markdown_to_html

# Capped ablation was called "clamp" before it was renamed "cap": both spellings of the condition are read.
_CONDITION_LABELS = {"baseline": "baseline", "ablation": "ablate direction (all layers)",
                     "optimized": "ablate refined direction (all layers)",
                     "cap": "capped ablation (to harmless level)", "clamp": "capped ablation (to harmless level)",
                     "actadd": "add direction"}
_COLORS = {"baseline": "tab:gray", "ablation": "tab:red", "optimized": "tab:purple", "cap": "tab:orange", "clamp": "tab:orange",
           "actadd": "tab:blue"}
_MODEL_NAMES = {"default": "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (the pinned default model)",
                "smollm2": "SmolLM2-135M-Instruct, GGUF Q4_1 (the pinned test fixture)"}
# docs/evaluation.md, "Accuracy against human labels": substring@v1 and @v2 on PyRIT 1.1.0's refusal.csv.
SUBSTRING_AGREEMENT = {"n": 105, "n_refusals": 70, "accuracy": (0.810, 0.724, 0.873), "precision": (1.000, 0.929, 1.000),
                       "recall": (0.714, 0.599, 0.807), "fn": 20, "fp": 0}
_PROMPT_CHARS = 700
"""Prompts longer than this are shortened in the examples (completions never are)."""
_DIRECTION_STAGES = ("candidates", "selection", "optimize")


def _optimized_sentence(optimization: dict[str, Any] | None) -> str:
    """How the refined direction was trained and which checkpoint was kept."""
    if not optimization:
        return "The direction was not refined (`optimize_steps` 0)."
    kept, config, target = optimization["kept"], optimization["config"], optimization["target"]
    start = ("the selected direction itself (no later checkpoint passed the KL filter with a lower bypass on validation), so "
             "the ablation rows below stand for it" if kept["step"] == 0 else f"step {kept['step']}")
    return (f"Refined direction: {config['steps']} Adam steps from the selected direction, minimising the cross-entropy of "
            f"{optimization['n_targets']} compliant answers to harmful *train* prompts (written under ablation of the "
            f"lowest-bypass candidate, position {target['position']} layer {target['layer']}) plus {config['kl_weight']:g} x the "
            f"harmless next-token KL, with the direction ablated at every layer. Kept: {start}, cosine "
            f"{kept['cosine_to_init']:.2f} to the selected direction, validation bypass score {kept['bypass']:.2f}, KL {kept['kl']:.3f}.")


def _actadd_sentence(direction: dict[str, Any]) -> str:
    """Which direction activation addition adds and how its coefficient was chosen, honestly (calibration may fall short)."""
    coef = direction.get("actadd_coef")
    tries = direction.get("actadd_calibration") or []
    target = (direction.get("config") or {}).get("actadd_target", 0.0)
    actadd = direction.get("actadd") or {}
    which = ""
    if actadd and not actadd.get("same_as_ablation", True):
        search = direction.get("actadd_search") or []
        first = search[0] if search else {}
        best_first = f" (its best mean harmless log-odds: {first['score']:.2f})" if first.get("score") is not None else ""
        which = (f"Activation addition adds a different candidate, `{actadd['point']}` at position {actadd['position']}: "
                 f"no coefficient of the selected direction lifted harmless refusal above the target{best_first}, so the "
                 f"next-lowest-bypass candidates were calibrated in turn ({len(search) - 1} tried) and the first that did is used. ")
    where = {"prompt": " It adds the direction at the prompt's tokens only, so the answer that follows is the model's own.",
             "all": " It adds the direction at every token, generated ones included (Arditi et al.)."}.get(actadd.get("positions", "all"), "")
    return _actadd_coef_sentence(which, coef, tries, target) + where


def _actadd_coef_sentence(which: str, coef: Any, tries: list[dict[str, Any]], target: float) -> str:
    """How the activation-addition coefficient was calibrated."""
    if not tries:
        return f"{which}Activation addition uses coefficient {coef}."
    best = max(t["induce"] for t in tries)
    tried = ", ".join(f"{t['coef']:g}" for t in tries)
    if best > target:
        return (f"{which}Activation addition uses coefficient {coef:g}, the one of {tried} with the highest mean harmless "
                f"refusal log-odds on the validation split ({best:.2f}, above the target {target:g}).")
    return (f"{which}Activation addition uses coefficient {coef:g}: none of {tried} lifted the mean harmless refusal log-odds "
            f"above {target:g} on the validation split, so the best one ({best:.2f}) is used.")


def _clamp_sentence(clamp: dict[str, Any]) -> str:
    """Which candidate capped ablation uses, or why there is none."""
    if not clamp:
        return "Capped ablation was not scored (`cap_candidates` 0)."
    if not clamp.get("point"):
        return (f"Capped ablation: none of the {len(clamp.get('table') or [])} candidates scored passed KL < "
                f"{clamp.get('kl_threshold')} on validation, so it is not evaluated.")
    row = next(r for r in clamp["table"] if r["status"] == "selected")
    return (f"Capped ablation (projection lowered to the harmless training mean of each layer, not to 0, at `resid_pre` of "
            f"every layer) uses `{clamp['point']}` at position {clamp['position']}: bypass score {row['bypass']:.2f}, KL "
            f"{row['kl']:.3f}, the lowest bypass under capping with KL < {clamp['kl_threshold']:g} among the "
            f"{len(clamp['table'])} lowest-bypass candidates.")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return (f"{hours} h " if hours else "") + f"{rest // 60} min {rest % 60} s"


def _cap_of(metrics: dict[str, Any]) -> dict[str, Any]:
    direction = metrics["direction"]
    return direction.get("cap") or direction.get("clamp") or {}


def _actadd_differs(direction: dict[str, Any]) -> bool:
    actadd = direction.get("actadd") or {}
    return bool(actadd) and not actadd.get("same_as_ablation", True)


def _labels(direction: dict[str, Any]) -> dict[str, str]:
    """Condition labels; activation addition says whether it adds the ablated direction or another one."""
    actadd = direction.get("actadd") or {}
    labels = dict(_CONDITION_LABELS)
    if _actadd_differs(direction):
        labels["actadd"] = f"add a different direction ({actadd['point']}, position {actadd['position']})"
    elif actadd:
        labels["actadd"] = "add direction (the ablated one)"
    return labels


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dataset in ("harmful", "harmless"):
        for condition in _CONDITION_LABELS:
            name = f"{condition}_{dataset}"
            if name in results:
                r = results[name]
                rows.append({"name": name, "dataset": dataset, "condition": condition, "value": r["refusal_rate"],
                             "lo": r["ci95"][0], "hi": r["ci95"][1], "n": r["n"], "k": r.get("k"), "judge": r["judge"],
                             "degenerate_k": r.get("degenerate_k"),
                             "label": f"{condition}\n{dataset}", "color": _COLORS[condition]})
    return rows


def _load_completions(run_dir: Path, name: str) -> list[dict[str, Any]]:
    path = run_dir / "completions" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt):
        return "\n".join(f"[{m.get('role', '?')}] {m['content']}" for m in prompt)
    if isinstance(prompt, dict) and "prompt" in prompt:
        return _prompt_text(prompt["prompt"])
    return json.dumps(prompt, ensure_ascii=False)


# What each (baseline refused, steered refused) pair means, for a condition meant to remove refusal and for one meant to induce it.
_KINDS = {
    "remove": {(True, False): "refusal removed", (True, True): "refusal survives", (False, True): "refused only when steered",
               (False, False): "answered both times"},
    "induce": {(False, True): "refusal induced", (False, False): "still answered (no refusal induced)",
               (True, True): "refused both times", (True, False): "answered only when steered"},
}
_WANTED = {"remove": (True, False), "induce": (False, True)}
_FAILED = {"remove": (True, True), "induce": (False, False)}


def _examples(run_dir: Path, dataset: str, other: str, goal: str, n: int = 4) -> tuple[list[dict[str, Any]], Counter]:
    """Up to ``n`` baseline/steered pairs: flips first, and always one where steering failed (a refusal that survives
    ablation, a prompt still answered under activation addition) when there is one; also the count of every kind."""
    base = _load_completions(run_dir, f"baseline_{dataset}")
    steered = _load_completions(run_dir, f"{other}_{dataset}")
    pairs = [(b, s, (bool(b["refused"]), bool(s["refused"]))) for b, s in zip(base, steered)]
    counts = Counter(_KINDS[goal][key] for _, _, key in pairs)
    wanted = [p for p in pairs if p[2] == _WANTED[goal]]
    failed = [p for p in pairs if p[2] == _FAILED[goal]]
    other_flips = [p for p in pairs if p[2][0] != p[2][1] and p[2] != _WANTED[goal]]
    chosen = wanted[: n - 1 if failed else n] + failed[:1]
    for pool in (other_flips, wanted, failed, pairs):  # fill up to n, flips before agreements
        chosen += [p for p in pool if all(p is not c for c in chosen)][: n - len(chosen)]
    order = {id(p): i for i, p in enumerate(pairs)}
    chosen.sort(key=lambda p: (p[2] != _WANTED[goal], p[2] == _FAILED[goal], order[id(p)]))
    return [{"prompt": _prompt_text(b["prompt"]), "kind": _KINDS[goal][key],
             "baseline": b, "steered": s, "baseline_refused": key[0], "steered_refused": key[1]}
            for b, s, key in chosen], counts


def _ending(record: dict[str, Any], max_new_tokens: int | None) -> str:
    reason, n_new = record.get("finish_reason"), record.get("n_new_tokens")
    if reason == "length":
        return f"cut off at the {n_new or max_new_tokens}-token limit"
    if reason == "stop":
        return f"ended by the model after {n_new} tokens" if n_new is not None else "ended by the model"
    return ""


def _verdict(refused: bool, record: dict[str, Any]) -> str:
    verdict = "refused" if refused else "answered"
    return verdict + (", looping" if record.get("degenerate") else "")


def _example_lines(index: int, ex: dict[str, Any], condition_label: str, max_new_tokens: int | None) -> list[str]:
    prompt = ex["prompt"].strip()
    if len(prompt) > _PROMPT_CHARS:
        prompt = prompt[:_PROMPT_CHARS] + f" [... {len(prompt) - _PROMPT_CHARS} more characters]"
    lines = [f"#### {index}. {ex['kind'].capitalize()}", "", "**Prompt** (test split):", "", code_block(prompt), ""]
    for who, record, refused in (("baseline", ex["baseline"], ex["baseline_refused"]),
                                 (condition_label, ex["steered"], ex["steered_refused"])):
        ending = _ending(record, max_new_tokens)
        text = record["text"].strip()
        lines += [f"**{who}: {_verdict(refused, record)}**" + (f" ({ending})" if ending else "") + ":", "",
                  code_block(text) if text else "*(empty completion)*", ""]
    return lines


def _count_sentence(counts: Counter, goal: str, condition_label: str, n: int) -> str:
    kinds = list(_KINDS[goal].values())
    parts = "; ".join(f"{kind}: {counts.get(kind, 0)}" for kind in kinds)
    failed = _KINDS[goal][_FAILED[goal]]
    missing = ("" if counts.get(failed) else
               f" There is no *{failed}* example to show: none of the {n} prompts is one.")
    return f"Of the {n} test prompts, under {condition_label}: {parts}.{missing}"


def _judge_lines(judge: str) -> list[str]:
    """The judge and what its rates can and cannot say."""
    if judge.startswith("substring"):
        a = SUBSTRING_AGREEMENT
        ci = {key: f"[{a[key][1]:.3f}, {a[key][2]:.3f}]" for key in ("accuracy", "precision", "recall")}
        return [
            f"> **Judge caveat.** Refusals are counted by {code_span(judge)}, a list of refusal phrases. On PyRIT 1.1.0's "
            f"{a['n']} human-labelled responses ({a['n_refusals']} refusals) it has recall **{a['recall'][0]:.3f}** "
            f"{ci['recall']}, precision {a['precision'][0]:.3f} {ci['precision']} and accuracy **{a['accuracy'][0]:.3f}** "
            f"{ci['accuracy']} (95% Wilson intervals; docs/evaluation.md, \"Accuracy against human labels\"): all "
            f"{a['fn']} of its errors are refusals it misses (lectures, partial refusals, answers that ignore the request), "
            f"none is a false alarm. So its refusal rates are **lower bounds** of the true refusal rate, and the share of "
            f"harmful prompts answered under steering is an upper bound. It judges only the tokens generated.",
        ]
    return [f"> **Judge.** Refusals are counted by {code_span(judge)}; docs/evaluation.md explains how to measure its agreement "
            "with human labels (`refusal-steer judge --against refusal-labels`) before trusting these rates."]


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds recorded in the stage stamps of the run folder and its ``direction/`` folder (every invocation's work)."""
    out: dict[str, float] = {}
    for folder, prefix in ((run_dir / ".stages", ""), (run_dir / "direction" / ".stages", "direction/")):
        for stamp in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                seconds = json.loads(stamp.read_text()).get("seconds")
            except (ValueError, AttributeError):
                continue
            if isinstance(seconds, (int, float)):
                out[prefix + stamp.stem] = float(seconds)
    return out


def _run_time_line(run_dir: Path, metrics: dict[str, Any]) -> str:
    this = metrics.get("seconds_this_invocation")
    total = metrics.get("seconds_total")  # all invocations together, when demo.py records it
    stages = _stage_seconds(run_dir)
    direction = sum(v for k, v in stages.items() if k.startswith("direction/") and k.split("/")[1] in _DIRECTION_STAGES[:2])
    refine = sum(v for k, v in stages.items() if k == "direction/optimize")
    generation = sum(v for k, v in stages.items() if not k.startswith("direction/"))
    parts = []
    if total is not None:
        parts.append(f"{_duration(total)} in all")
    if this is not None:
        parts.append(f"{_duration(this)} for the invocation that wrote this report")
    text = "**Run time:** " + ("; ".join(parts) if parts else "not recorded")
    if stages:
        timed = sum(stages.values())
        text += (f". Timed stages, summed over every invocation that built this folder: {_duration(timed)} (fitting and selecting "
                 f"the direction {_duration(direction)}, refining it {_duration(refine)}, generating the test completions "
                 f"{_duration(generation)}; model loading, the refusal-token probe and the KL measurements are not timed)")
        if this is not None and total is None and this < 0.9 * timed:
            text += ". The invocation took less than its stages: it resumed a folder whose earlier stages were reused"
    return text + "."


def _per_class(harmful: Any, harmless: Any) -> str:
    return f"{harmful} prompts per class" if harmful == harmless else f"{harmful} harmful and {harmless} harmless prompts"


def _split_sizes(run_dir: Path, metrics: dict[str, Any]) -> dict[str, str]:
    """Prompts per split and class as used: ``direction/prompts.json`` and the results' n where present (a small dataset's
    split may hold fewer prompts than asked for), else the config's sizes."""
    config, results = metrics.get("config") or {}, metrics["results"]
    try:
        fitted = {key: len(value) for key, value in json.loads((run_dir / "direction" / "prompts.json").read_text()).items()}
    except (OSError, ValueError, TypeError):
        fitted = {}
    both = lambda key, fallback: (fitted.get(f"harmful_{key}", fallback), fitted.get(f"harmless_{key}", fallback))  # noqa: E731
    n_kl = fitted.get("harmless_kl", fitted.get("harmless_val", config.get("n_kl")))
    n_kl_optimize = fitted.get("harmless_kl_optimize", config.get("optimize_n_kl"))
    test = tuple(results.get(f"baseline_{role}", {}).get("n", config.get("n_eval", "?")) for role in ("harmful", "harmless"))
    return {"train": _per_class(*both("train", config.get("n_train", "?"))), "val": _per_class(*both("val", config.get("n_val", "?"))),
            "kl": str(n_kl) if n_kl is not None else "", "kl_optimize": str(n_kl_optimize) if n_kl_optimize is not None else "",
            "test": _per_class(*test)}


def _dataset_line(run_dir: Path, metrics: dict[str, Any]) -> str:
    config = metrics.get("config") or {}
    described = []
    for role in ("harmful", "harmless"):
        name = config.get(role, "?")
        description = _dataset_description(name)
        described.append(f"{role} {code_span(name)}" + (f" ({description})" if description else ""))
    sizes = _split_sizes(run_dir, metrics)
    kl = f", its KL filter on {sizes['kl']} harmless validation prompts" if sizes["kl"] else ""
    refined = metrics.get("optimization") and config.get("optimize_steps", 1) and sizes["kl_optimize"]
    refine = f" (the refinement's KL filter on {sizes['kl_optimize']})" if refined else ""
    return (f"**Datasets:** {' and '.join(described)}. Each is split by a hash of the prompt text (seed {config.get('seed', '?')}) "
            f"into train / val / test. The direction was fitted on **train**: {sizes['train']}, and selected on **validation**: "
            f"{sizes['val']}{kl}{refine}. Every rate below is on **held-out test**: {sizes['test']}, disjoint from both.")


def _dataset_description(name: str) -> str | None:
    try:
        from ..data.registry import get_spec

        return get_spec(name).description
    except Exception:  # a user file, a union or an unknown name: the name alone is shown
        return None


def _model_line(metrics: dict[str, Any]) -> str:
    spec = str(metrics["model"])
    name = _MODEL_NAMES.get(spec)
    shown = f"{name}, spec {code_span(spec)}" if name else code_span(spec)
    sha = metrics.get("model_sha256")
    return f"**Model:** {shown}; " + (f"sha256 {code_span(sha)}." if sha else "sha256 not recorded (not a pinned model file).")


def _decoding_line(metrics: dict[str, Any]) -> str:
    n = (metrics.get("config") or {}).get("max_new_tokens")
    budget = f"at most **{n} new tokens**" if n is not None else "a fixed budget of new tokens"
    return (f"**Decoding:** greedy (argmax, no sampling), {budget} per answer, so most completions below stop "
            "mid-sentence: they are cut off by the budget, not ended by the model (each example says which). The judge "
            "sees only these tokens.")


def _conditions_table(metrics: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Which direction each condition applies, where, and how strongly."""
    direction, results = metrics["direction"], metrics["results"]
    present = [c for c in _CONDITION_LABELS if f"{c}_harmful" in results or f"{c}_harmless" in results]
    selected = f"{code_span(direction['point'])}, position {direction['position']}"
    actadd = direction.get("actadd") or {}
    optimization = metrics.get("optimization") or {}
    cap = _cap_of(metrics)
    lines = ["| condition | what it does | direction used | where |", "|---|---|---|---|"]
    for c in present:
        if c == "baseline":
            row = ("no intervention", "none", "-")
        elif c == "ablation":
            row = ("projects the direction out of the residual stream", f"the selected difference-in-means direction, {selected}",
                   "every layer, every token")
        elif c == "optimized":
            kept = optimization.get("kept") or {}
            cos = f", cosine {kept['cosine_to_init']:.2f} to it" if "cosine_to_init" in kept else ""
            row = ("projects the refined direction out", f"the selected direction after {optimization.get('step', '?')} "
                   f"gradient steps{cos}", "every layer, every token")
        elif c in ("cap", "clamp"):
            point = cap.get("point")
            where = f"{code_span(point)}, position {cap.get('position')}" if point else "the selected direction"
            row = ("lowers the projection to the harmless training mean of each layer", where, "resid_pre of every layer")
        else:
            coef = actadd.get("coef", direction.get("actadd_coef"))
            coef_text = f"adds {coef:g} x the direction" if isinstance(coef, (int, float)) else "adds the direction"
            if _actadd_differs(direction):
                used = (f"**a different direction from the ablated one**: {code_span(actadd['point'])}, position "
                        f"{actadd['position']} (ablation uses {selected})")
            else:
                used = f"the ablated direction, {selected}"
            positions = {"prompt": "the prompt's tokens only", "all": "every token, generated ones included"}.get(
                actadd.get("positions", "all"), str(actadd.get("positions")))
            layer = actadd.get("layer")
            row = (coef_text, used, f"layer {layer}, {positions}" if layer is not None else positions)
        lines.append(f"| {labels[c]} | " + " | ".join(row) + " |")
    return lines


def write_demo_report(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Write ``report.md``, ``report.html`` and ``refusal_rates.png`` into ``run_dir``; return the Markdown path."""
    run_dir = Path(run_dir)
    rows = _rows(metrics["results"])
    plot_rates(rows, run_dir / "refusal_rates.png", title=f"refusal rate on held-out prompts ({metrics['model']})")
    direction = metrics["direction"]
    labels = _labels(direction)
    chosen = direction["chosen"]
    results = metrics["results"]
    config = metrics.get("config") or {}
    max_new_tokens = config.get("max_new_tokens")
    clamp = _cap_of(metrics)
    judge = rows[0]["judge"] if rows else str(config.get("judge", "?"))
    tokens = metrics.get("refusal_tokens")
    tokens_text = ", ".join(code_span(t) for t in tokens) if tokens else "none recorded"
    direction_config = direction.get("config") or {}
    lines = [
        f"# refusal-steer demo: {metrics['model']}",
        "",
        "## Setup",
        "",
        f"- {_model_line(metrics)}",
        f"- {_dataset_line(run_dir, metrics)}",
        f"- {_decoding_line(metrics)}",
        f"- **Judge:** {code_span(judge)}. Rates are k/n with 95% Wilson intervals.",
        f"- {_run_time_line(run_dir, metrics)}",
        "",
        *_judge_lines(judge),
        "",
        "## Conditions",
        "",
        *_conditions_table(metrics, labels),
        "",
    ]
    if _actadd_differs(direction):
        actadd = direction["actadd"]
        lines += [f"**Activation addition adds a different direction from the one ablated:** {code_span(actadd['point'])} at "
                  f"position {actadd['position']}, not the selected {code_span(direction['point'])} at position "
                  f"{direction['position']}; its rows measure that other direction.", ""]
    lines += [
        "## Refusal rates",
        "",
        "| prompts | condition | refusal rate | 95% CI | k/n | looping completions |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        loops = "n/a" if r["degenerate_k"] is None else f"{r['degenerate_k']}/{r['n']}"
        lines.append(f"| {r['dataset']} | {labels[r['condition']]} | {_pct(r['value'])} | "
                     f"[{_pct(r['lo'])}, {_pct(r['hi'])}] | {r['k']}/{r['n']} | {loops} |")
    lines += ["", "Every rate is the judge's count, so a lower bound of the true refusal rate (see the judge caveat above).",
              "", "Looping completions repeat one pair of words 4 or more times (e.g. \"as I as I as I as I\"): a refusal "
                  "that loops is broken text, whatever the judge says (`refusal_steer.evaluation.fluency`)."]
    for key, what in (("kl_ablation_harmless", "under ablation"), ("kl_optimized_harmless", "under ablation of the refined direction"),
                      ("kl_cap_harmless", "under capped ablation"), ("kl_clamp_harmless", "under capped ablation")):
        kl = results.get(key)
        if kl:
            lines += ["", f"KL divergence of the next-token distribution on harmless test prompts {what}: **{kl['kl']:.4f}** "
                          f"nats (95% CI [{kl['ci95'][0]:.4f}, {kl['ci95'][1]:.4f}], n={kl['n']})."]
    lines += ["", "![refusal rates](refusal_rates.png)", ""]
    lines += [
        "## Refusal direction",
        "",
        f"Selected {code_span(direction['point'])} at post-instruction position {direction['position']} "
        f"(bypass score {chosen['bypass']:.2f} vs baseline {direction['baseline_refusal_score_harmful']:.2f}; "
        f"induce score {chosen['induce']:.2f}; KL {chosen['kl']:.3f}; selection rule {code_span(direction.get('rule'))}). "
        f"Refusal tokens: {tokens_text}. {_actadd_sentence(direction)}",
        "",
        _optimized_sentence(metrics.get("optimization")),
        "",
        *([_clamp_sentence(clamp), ""] if clamp or direction_config.get("cap_candidates") or direction_config.get("clamp_candidates")
          else []),
    ]
    if (run_dir / "direction" / "selection_heatmap.png").is_file():
        lines += ["![selection heatmap](direction/selection_heatmap.png)", ""]
    lines += ["## Examples", "",
              "Baseline and steered completions of the same test prompts. Flips come first; each section also shows a prompt where "
              "steering did not work (a refusal that survives ablation, a harmless prompt still answered under activation "
              "addition) when there is one. Completions are verbatim, cut off where decoding stopped.", ""]
    sections = [("harmful", "ablation", "remove"), ("harmful", "optimized", "remove"), ("harmful", "cap", "remove"),
                ("harmful", "clamp", "remove"), ("harmless", "actadd", "induce")]
    for dataset, other, goal in sections:
        if f"{other}_{dataset}" not in results:
            continue
        examples, counts = _examples(run_dir, dataset, other, goal)
        lines += [f"### {dataset.capitalize()} prompts: baseline vs {labels[other]}", ""]
        if not examples:
            lines += [f"No completions found in `completions/{other}_{dataset}.jsonl`.", ""]
            continue
        lines += [_count_sentence(counts, goal, labels[other], sum(counts.values())), ""]
        for i, ex in enumerate(examples, 1):
            lines += _example_lines(i, ex, labels[other], max_new_tokens)
    lines += ["## Files", "", "- `metrics.json`: every number above", "- `completions/*.jsonl`: every completion with its verdict",
              "- `direction/`: the direction, its candidates, selection table and heatmap; `optimized.safetensors` and "
              "`optimization.json`: the refined direction and its training record", "- `manifest.json`: versions, hashes, config", ""]
    markdown = "\n".join(lines)
    md_path = run_dir / "report.md"
    md_path.write_text(markdown)
    (run_dir / "report.html").write_text(markdown_to_html(markdown, f"refusal-steer demo: {metrics['model']}"))
    return md_path
