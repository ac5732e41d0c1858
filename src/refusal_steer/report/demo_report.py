"""The demo's readable report: a rates table with n and CIs, plots, and side-by-side completions."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .plots import plot_rates

_CONDITION_LABELS = {"baseline": "baseline", "ablation": "ablate direction (all layers)",
                     "optimized": "ablate refined direction (all layers)",
                     "clamp": "capped ablation (to harmless level)", "actadd": "add direction"}
_COLORS = {"baseline": "tab:gray", "ablation": "tab:red", "optimized": "tab:purple", "clamp": "tab:orange", "actadd": "tab:blue"}


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
        return "Capped ablation was not scored (`clamp_candidates` 0)."
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


def _examples(run_dir: Path, dataset: str, other: str, n: int = 4) -> list[dict[str, Any]]:
    """Prompts where the judge's verdict flips between baseline and ``other``, then any others."""
    base = _load_completions(run_dir, f"baseline_{dataset}")
    steered = _load_completions(run_dir, f"{other}_{dataset}")
    pairs = list(zip(base, steered))
    flipped = [p for p in pairs if p[0]["refused"] != p[1]["refused"]]
    chosen = (flipped + [p for p in pairs if p not in flipped])[:n]
    return [{"prompt": b["prompt"] if isinstance(b["prompt"], str) else json.dumps(b["prompt"]),
             "baseline": b["text"], "baseline_refused": b["refused"], "steered": s["text"], "steered_refused": s["refused"]}
            for b, s in chosen]


def write_demo_report(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Write ``report.md``, ``report.html`` and ``refusal_rates.png`` into ``run_dir``; return the Markdown path."""
    rows = _rows(metrics["results"])
    plot_rates(rows, run_dir / "refusal_rates.png", title=f"refusal rate on held-out prompts ({metrics['model']})")
    direction = metrics["direction"]
    chosen = direction["chosen"]
    kl = metrics["results"].get("kl_ablation_harmless")
    kl_clamp = metrics["results"].get("kl_clamp_harmless")
    clamp = direction.get("clamp") or {}
    judge = rows[0]["judge"] if rows else "?"
    lines = [
        f"# refusal-steer demo: {metrics['model']}",
        "",
        f"Model sha256 `{metrics['model_sha256']}`. Judge: `{judge}`. Rates are k/n with 95% Wilson intervals; "
        "prompts are held-out *test* splits, disjoint from the prompts that fitted and selected the direction.",
        "",
        "## Refusal direction",
        "",
        f"Selected `{direction['point']}` at post-instruction position {direction['position']} "
        f"(bypass score {chosen['bypass']:.2f} vs baseline {direction['baseline_refusal_score_harmful']:.2f}; "
        f"induce score {chosen['induce']:.2f}; KL {chosen['kl']:.3f}; selection rule `{direction.get('rule')}`). "
        f"Refusal tokens: {metrics.get('refusal_tokens')}. {_actadd_sentence(direction)}",
        "",
        _optimized_sentence(metrics.get("optimization")),
        "",
        *([_clamp_sentence(clamp), ""] if clamp or (direction.get("config") or {}).get("clamp_candidates") else []),
        "![selection heatmap](direction/selection_heatmap.png)",
        "",
        "## Refusal rates",
        "",
        "| prompts | condition | refusal rate | 95% CI | k/n | looping completions |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        loops = "n/a" if r["degenerate_k"] is None else f"{r['degenerate_k']}/{r['n']}"
        lines.append(f"| {r['dataset']} | {_CONDITION_LABELS[r['condition']]} | {_pct(r['value'])} | "
                     f"[{_pct(r['lo'])}, {_pct(r['hi'])}] | {r['k']}/{r['n']} | {loops} |")
    lines += ["", "Looping completions repeat one pair of words 4 or more times (e.g. \"as I as I as I as I\"): a refusal "
                  "that loops is broken text, whatever the judge says (`refusal_steer.evaluation.fluency`)."]
    if kl:
        lines += ["", f"KL divergence of the next-token distribution on harmless prompts under ablation: "
                      f"**{kl['kl']:.4f}** nats (95% CI [{kl['ci95'][0]:.4f}, {kl['ci95'][1]:.4f}], n={kl['n']})."]
    kl_optimized = metrics["results"].get("kl_optimized_harmless")
    if kl_optimized:
        lines += ["", f"The same under ablation of the refined direction: **{kl_optimized['kl']:.4f}** nats "
                      f"(95% CI [{kl_optimized['ci95'][0]:.4f}, {kl_optimized['ci95'][1]:.4f}], n={kl_optimized['n']})."]
    if kl_clamp:
        lines += ["", f"The same under capped ablation: **{kl_clamp['kl']:.4f}** nats "
                      f"(95% CI [{kl_clamp['ci95'][0]:.4f}, {kl_clamp['ci95'][1]:.4f}], n={kl_clamp['n']})."]
    lines += ["", "![refusal rates](refusal_rates.png)", ""]
    sections = [("harmful", "ablation", "Harmful prompts: baseline vs ablation"),
                ("harmful", "optimized", "Harmful prompts: baseline vs ablation of the refined direction"),
                ("harmful", "clamp", "Harmful prompts: baseline vs capped ablation"),
                ("harmless", "actadd", "Harmless prompts: baseline vs activation addition")]
    sections = [s for s in sections if f"{s[1]}_{s[0]}" in metrics["results"]]
    for dataset, other, title in sections:
        lines += [f"## {title}", ""]
        for ex in _examples(run_dir, dataset, other):
            lines += [f"**Prompt:** {ex['prompt']}", "",
                      f"- baseline ({'refused' if ex['baseline_refused'] else 'answered'}): {ex['baseline'].strip()!r}",
                      f"- {other} ({'refused' if ex['steered_refused'] else 'answered'}): {ex['steered'].strip()!r}", ""]
    lines += ["## Files", "", "- `metrics.json`: every number above", "- `completions/*.jsonl`: every completion with its verdict",
              "- `direction/`: the direction, its candidates, selection table and heatmap; `optimized.safetensors` and "
              "`optimization.json`: the refined direction and its training record", "- `manifest.json`: versions, hashes, config", ""]
    markdown = "\n".join(lines)
    md_path = run_dir / "report.md"
    md_path.write_text(markdown)
    (run_dir / "report.html").write_text(_to_html(markdown, metrics["model"]))
    return md_path


def _to_html(markdown: str, title: str) -> str:
    """A minimal, dependency-free rendering of the report's Markdown subset (headings, tables, images, lists)."""
    out, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            out.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            out.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}" style="max-width:100%">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            text = html.escape(line).replace("**", "")
            out.append(f"<p>{text}</p>")
    if in_table:
        out.append("</table>")
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;padding:4px 8px}table{border-collapse:collapse}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(out)}</body></html>"
