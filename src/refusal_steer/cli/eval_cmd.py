"""``refusal-steer eval`` and ``refusal-steer judge``: measure refusal, KL and capability under steering.

``eval`` writes ``--out FILE.json`` (the headline figure with n, 95% interval, judge and provenance)
and, next to it, ``FILE.completions.jsonl`` (refusal, gsm8k) or ``FILE.items.jsonl`` (kl, mmlu, arc)
with one line per prompt or question.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from . import app
from ._common import console, err_console, print_json, steer_help


class Metric(str, Enum):
    refusal = "refusal"
    kl = "kl"
    mmlu = "mmlu"
    arc = "arc"
    gsm8k = "gsm8k"


#: Dataset, split and limit a metric uses when the user gives none. Refusal and KL prompts come from
#: the ``test`` split, which never overlaps the train/val prompts directions are fitted and selected on.
_DEFAULTS: dict[Metric, tuple[str | None, str, int | None]] = {
    Metric.refusal: (None, "test", None),
    Metric.kl: ("harmless", "test", 100),
    Metric.mmlu: ("mmlu", "all", 500),
    Metric.arc: ("arc-challenge", "all", None),
    Metric.gsm8k: ("gsm8k", "all", 50),
}


def _sibling(out: Path, kind: str) -> Path:
    """``runs/x.json`` -> ``runs/x.completions.jsonl``."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.{kind}.jsonl")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _load_records(name: str, split: str, limit: int | None, seed: int, metric: Metric) -> list[Any]:
    from ..data import load_dataset
    from ..evaluation import stratified_subset

    split_arg = None if split == "all" else split
    if metric in (Metric.mmlu, Metric.arc):
        # A stratified (by subject) subset rather than load_dataset's plain random one.
        ds = load_dataset(name, split=split_arg, seed=seed)
        if ds.info.kind != "multiple_choice":
            raise ConfigError(f"--metric {metric.value} needs a multiple-choice dataset; {name!r} holds {ds.info.kind}", fix="use --dataset mmlu or arc-challenge")
        return stratified_subset(list(ds), limit, seed=seed)
    ds = load_dataset(name, split=split_arg, limit=limit, seed=seed)
    wanted = {Metric.refusal: ("instruction", "conversation"), Metric.kl: ("instruction", "conversation"), Metric.gsm8k: ("math",)}[metric]
    if ds.info.kind not in wanted:
        raise ConfigError(
            f"--metric {metric.value} needs a dataset of {' or '.join(wanted)} records; {name!r} holds {ds.info.kind}",
            fix="run 'refusal-steer data list' to see each dataset's kind",
        )
    return list(ds)


@app.command("eval")
def eval_command(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    steer: list[str] = typer.Option([], "--steer", "-s", help=steer_help("Steer with (none given = baseline)")),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset name or jsonl:PATH / csv:PATH. Defaults: kl harmless, mmlu mmlu, arc arc-challenge, gsm8k gsm8k."),
    split: str = typer.Option(None, help="train, val, test or all. Default: test for refusal/kl (disjoint from the prompts directions are fitted on), all for mmlu/arc/gsm8k."),
    limit: int = typer.Option(None, min=1, help="At most this many prompts/questions (seeded). Default: all for refusal/arc, 100 for kl, 500 for mmlu (stratified by subject), 50 for gsm8k."),
    metric: Metric = typer.Option(Metric.refusal, help="refusal (generate + judge), kl (vs unsteered, harmless prompts), mmlu/arc (answer-letter log-likelihood), gsm8k (exact match; slow)."),
    judge: str = typer.Option("substring", help="Refusal judge: substring, ngram-lr, classifier:DIR or llm:MODEL."),
    judge_opt: list[str] = typer.Option([], "--judge-opt", help="Judge option KEY=VALUE, e.g. refusal_label=LABEL_1 or base_url=http://localhost:8000/v1."),
    max_new_tokens: int = typer.Option(None, min=1, help="Tokens generated per answer. Default: 64 for refusal, 256 for gsm8k."),
    batch_size: int = typer.Option(32, min=1, help="Prompts per batch (halved automatically on out-of-memory)."),
    seed: int = typer.Option(0, help="Seed of the split, the subset and the bootstrap."),
    ci: str = typer.Option("wilson", help="Interval for rates: wilson or bootstrap (KL always uses the bootstrap)."),
    dtype: str = typer.Option(None, help="float32, bfloat16, float16 or auto."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the JSON result; per-item JSONL goes next to it."),
    as_json: bool = typer.Option(False, "--json", help="Also print the JSON result on stdout."),
) -> None:
    """Measure refusal rate, KL or capability of MODEL with the given steering, with n and a 95% interval."""
    from .. import evaluation as ev
    from ..interventions import parse_steer
    from ..models import load_model

    default_ds, default_split, default_limit = _DEFAULTS[metric]
    dataset = dataset or default_ds
    if dataset is None:
        raise ConfigError("--metric refusal needs --dataset", fix="e.g. --dataset advbench (harmful) or --dataset harmless")
    split = split or default_split
    limit = limit if limit is not None else default_limit
    if max_new_tokens is None:
        max_new_tokens = 256 if metric is Metric.gsm8k else 64
    if ci not in ev.stats.CI_METHODS:
        raise ConfigError(f"--ci {ci!r} is unknown", fix="use wilson or bootstrap")
    judge_options = ev.parse_judge_options(judge_opt)
    judge_obj = ev.get_judge(judge, **judge_options) if metric is Metric.refusal else None

    records = _load_records(dataset, split, limit, seed, metric)
    started = time.time()
    lm = load_model(model, dtype=dtype)
    interventions = [i for s in steer for i in parse_steer(s, lm)]
    result: dict[str, Any] = {
        "metric": metric.value,
        "model": model,
        "model_sha256": lm.source_sha256,
        "steer": list(steer),
        "dataset": dataset,
        "split": split,
        "limit": limit,
        "seed": seed,
    }
    if metric is Metric.refusal:
        res = ev.evaluate_refusal(lm, records, interventions, judge=judge_obj, max_new_tokens=max_new_tokens, batch_size=batch_size, ci=ci, seed=seed, dataset=dataset, split=split)  # type: ignore[arg-type]
        path = _sibling(out, "completions")
        _write_jsonl(path, res.records())
        headline = {"refusal_rate": res.rate.value, "ci95": list(res.ci95), "n": res.n, "k": res.rate.k, "ci_method": res.rate.method,
                    "judge": res.judge, "judge_version": res.judge_version, "judge_info": judge_obj.describe(),  # type: ignore[union-attr]
                    "max_new_tokens": max_new_tokens, "completions": str(path),
                    "degenerate_rate": res.degenerate_rate.value, "degenerate_ci95": list(res.degenerate_rate.ci95),
                    "degenerate_k": res.degenerate_rate.k}
        record = res.record
        summary = f"refusal rate {res.rate} judge {res.judge}@{res.judge_version}; looping completions {res.degenerate_rate}"
    elif metric is Metric.kl:
        res_kl = ev.evaluate_kl(lm, records, interventions, batch_size=batch_size, seed=seed, dataset=dataset, split=split)
        path = _sibling(out, "items")
        _write_jsonl(path, [{"prompt": ev.prompt_text(r), "kl": v} for r, v in zip(records, res_kl.per_prompt)])
        headline = {"kl": res_kl.kl, "ci95": list(res_kl.ci95), "n": res_kl.mean.n, "ci_method": res_kl.mean.method, "items": str(path)}
        record = res_kl.record
        summary = f"KL(unsteered || steered) {res_kl.mean} nats"
    elif metric in (Metric.mmlu, Metric.arc):
        res_mc = ev.evaluate_multiple_choice(lm, records, interventions, batch_size=batch_size, ci=ci, seed=seed, dataset=dataset, split=split)  # type: ignore[arg-type]
        path = _sibling(out, "items")
        _write_jsonl(path, res_mc.items)
        headline = {"accuracy": res_mc.accuracy.value, "ci95": list(res_mc.accuracy.ci95), "n": res_mc.accuracy.n, "k": res_mc.accuracy.k,
                    "ci_method": res_mc.accuracy.method, "subset": "stratified by subject" if metric is Metric.mmlu else "stratified by source",
                    "mean_letter_mass": res_mc.mean_letter_mass, "by_subject": {s: r.value for s, r in res_mc.by_subject.items()}, "items": str(path)}
        record = res_mc.record
        summary = f"{metric.value} accuracy {res_mc.accuracy}"
    else:
        res_m = ev.evaluate_gsm8k(lm, records, interventions, max_new_tokens=max_new_tokens, batch_size=batch_size, ci=ci, seed=seed, dataset=dataset, split=split)  # type: ignore[arg-type]
        path = _sibling(out, "completions")
        _write_jsonl(path, [{**item, "text": c.text} for item, c in zip(res_m.items, res_m.completions)])
        headline = {"accuracy": res_m.accuracy.value, "ci95": list(res_m.accuracy.ci95), "n": res_m.accuracy.n, "k": res_m.accuracy.k,
                    "ci_method": res_m.accuracy.method, "max_new_tokens": max_new_tokens, "completions": str(path)}
        record = res_m.record
        summary = f"gsm8k exact match {res_m.accuracy}"
    # The current keys stay; "record" is the same ResultRecord the demo and `refusal-steer run` write.
    result = {**headline, **result, "elapsed_s": round(time.time() - started, 1), "record": record.to_dict() if record else None}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    err_console.print(f"{summary}\nwrote {out} and {path}", highlight=False)
    if as_json:
        print_json(result)


def _read_completions(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist", fix="pass the .completions.jsonl that 'refusal-steer eval' wrote, or any JSONL with prompt and text fields")
    prompts, texts = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number} is not JSON: {exc}") from exc
        text = next((row[k] for k in ("text", "completion", "response") if k in row), None)
        if text is None:
            raise ConfigError(f"{path}:{number} has no text/completion/response field")
        prompt = row.get("prompt", "")
        if not isinstance(prompt, str):
            from ..evaluation import prompt_text

            prompt = prompt_text(prompt)
        prompts.append(prompt)
        texts.append(str(text))
    return prompts, texts


@app.command("judge")
def judge_command(
    file: Path = typer.Option(None, "--file", "-f", help="JSONL with 'prompt' and 'text' (or completion/response) per line."),
    judge: str = typer.Option("substring", help="substring, ngram-lr, classifier:DIR or llm:MODEL."),
    judge_opt: list[str] = typer.Option([], "--judge-opt", help="Judge option KEY=VALUE."),
    also: str = typer.Option(None, "--also", help="With --file: a second judge (e.g. ngram-lr) beside --judge, with the two judges' agreement."),
    against: str = typer.Option(None, help="Instead of --file: check the judge against a labelled dataset: refusal-labels (PyRIT), refusal-labels-default (the default model's completions) or refusal-labels-fresh (attacked answers, never fitted on)."),
    split: str = typer.Option(None, help="With --against: only the 'fit' or 'test' part of the labelled set (ngram-lr is fitted on 'fit')."),
    ci: str = typer.Option("wilson", help="wilson or bootstrap."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the JSON result here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Judge saved completions (refusal rate with 95% interval), or measure a judge's agreement with human labels."""
    from .. import evaluation as ev

    judge_obj = ev.get_judge(judge, **ev.parse_judge_options(judge_opt))
    if (file is None) == (against is None):
        raise ConfigError("give exactly one of --file and --against", fix="e.g. --file runs/eval.completions.jsonl or --against refusal-labels")
    if also is not None and file is None:
        raise ConfigError("--also goes with --file", fix="e.g. --file runs/demo/completions/baseline_harmful.jsonl --also ngram-lr")
    if split is not None and against is None:
        raise ConfigError("--split goes with --against", fix="e.g. --against refusal-labels-default --split test")
    if against is not None:
        agreement = ev.agreement_with_labels(judge_obj, against, split=split)
        result = agreement.to_dict()
        summary = (f"{agreement.judge}@{agreement.judge_version} vs {agreement.dataset}: accuracy {agreement.accuracy}, "
                   f"precision {agreement.precision}, recall {agreement.recall}")
    else:
        prompts, texts = _read_completions(file)
        refused = judge_obj(prompts, texts)
        rate = ev.rate_from_bools(refused, method=ci)  # type: ignore[arg-type]
        result = {"refusal_rate": rate.value, "ci95": list(rate.ci95), "n": rate.n, "k": rate.k, "ci_method": rate.method,
                  "judge": judge_obj.name, "judge_version": judge_obj.version, "file": str(file), "refused": refused}
        summary = f"refusal rate {rate} judge {judge_obj.name}@{judge_obj.version}"
        if also is not None:
            second = ev.get_judge(also)
            refused2 = second(prompts, texts)
            rate2 = ev.rate_from_bools(refused2, method=ci)  # type: ignore[arg-type]
            agree = ev.verdict_agreement(refused, refused2)
            result["also"] = {"refusal_rate": rate2.value, "ci95": list(rate2.ci95), "n": rate2.n, "k": rate2.k, "judge": second.name,
                              "judge_version": second.version, "refused": refused2}
            result["agreement"] = agree
            summary += (f"; {rate2} judge {second.name}@{second.version}; agreement {agree['agreement']['value']:.3f}"
                        f" (kappa {'undefined' if agree['cohen_kappa'] is None else format(agree['cohen_kappa'], '.2f')}, n {agree['n']})")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    if as_json:
        print_json(result)
    else:
        console.print(summary, highlight=False)
