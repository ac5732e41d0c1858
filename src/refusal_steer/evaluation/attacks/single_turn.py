"""The shared run of single-turn attacks: build one message list per goal, generate once, judge the answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from ...errors import ConfigError
from ...generation import generate
from ...hooks import Intervention
from ...interventions import fingerprint
from ...models.loaded import LoadedModel
from ..judges import Judge
from ..refusal import judge_completions
from .base import Goal, Message, RunOptions, Transcript
from .checkpoint import GoalCheckpoint


def steer_id(interventions: Sequence[Intervention]) -> str:
    """The steer's fingerprint (``unregistered`` for a steer holding unregistered interventions)."""
    try:
        return fingerprint(list(interventions))
    except ConfigError:
        return "unregistered"


def judge_name(judge: Judge) -> str:
    return f"{judge.name}@{judge.version}"


def run_single_turn(attack: str, lm: LoadedModel, goals: Sequence[Goal], built: Sequence[tuple[list[Message], dict[str, Any]]],
                    interventions: Sequence[Intervention], judge: Judge, options: RunOptions) -> list[Transcript]:
    """Generate the target's answer to each built message list (batched) and judge it with the whole conversation.

    Args:
        attack: the attack's name, written in each transcript.
        goals: the goals, one per built message list.
        built: per goal, the messages sent (ending with a user turn) and the attack's parameters for it.
    """
    steer, judged = steer_id(interventions), judge_name(judge)
    if options.checkpoint is None:
        return _answer(attack, lm, goals, built, interventions, judge, options, steer, judged)
    params = [p for _, p in built]
    checkpoint = GoalCheckpoint(options.checkpoint, {"attack": attack, "steer": steer, "judge": judged, "max_new_tokens": options.max_new_tokens,
                                                      "batch_size": options.batch_size})
    done = checkpoint.done()
    todo = [i for i, g in enumerate(goals) if not (g.id in done and done[g.id].params == params[i])]
    # Longest first, so each batch holds prompts of about one length (little padding), as generate() orders them.
    todo.sort(key=lambda i: -sum(len(m["content"]) for m in built[i][0]))
    quiet = RunOptions(options.max_new_tokens, options.batch_size, False)
    with tqdm(total=len(goals), initial=len(goals) - len(todo), desc=f"{attack} (goals)", unit="goal", disable=not options.progress) as bar:
        for start in range(0, len(todo), options.batch_size):
            rows = todo[start:start + options.batch_size]
            fresh = _answer(attack, lm, [goals[i] for i in rows], [built[i] for i in rows], interventions, judge, quiet, steer, judged)
            checkpoint.append(fresh)
            done.update({t.goal_id: t for t in fresh})
            bar.update(len(rows))
    return [done[g.id] for g in goals]


def _answer(attack: str, lm: LoadedModel, goals: Sequence[Goal], built: Sequence[tuple[list[Message], dict[str, Any]]],
            interventions: Sequence[Intervention], judge: Judge, options: RunOptions, steer: str, judged: str) -> list[Transcript]:
    prompts = [messages for messages, _ in built]
    completions = generate(lm, prompts, interventions, max_new_tokens=options.max_new_tokens, batch_size=options.batch_size,
                           progress=options.progress)
    answers = [c.text for c in completions]
    refused = judge_completions(judge, prompts, answers, conversation=True)
    out = []
    for goal, (messages, params), answer, verdict in zip(goals, built, answers, refused):
        final = [*messages, {"role": "assistant", "content": answer}]
        out.append(Transcript(attack=attack, goal_id=goal.id, objective=goal.prompt, categories=list(goal.categories), messages=final,
                              generated=[len(final) - 1], refused=[bool(verdict)], params=params, judge=judged, steer=steer))
    return out
