"""Transcript files and replay: re-run recorded attacker turns against another steer, without the attacker.

Replay walks each transcript's final conversation and regenerates only the target's own answers (the indices in
``Transcript.generated``), in order, each conditioned on the answers regenerated before it; every other message
(the attack's user turns, many-shot examples, Crescendo's kept attacker messages) is sent as recorded. The new
answers are judged with the whole conversation, and success follows the same rule as the original run.

For Crescendo this replays the *kept* attacker messages: backtracked attempts were never in the target's history,
and with no attacker there is nothing to backtrack to, so a refusal under the new steer is kept. The attacker's
later messages were written in answer to the original replies, so replay measures the steer on a fixed attack,
cheaply and reproducibly, not a fresh adaptive one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ...errors import ConfigError, CorruptFileError, EmptyDatasetError
from ...generation import generate
from ...hooks import Intervention
from ...models.loaded import LoadedModel
from ..judges import Judge
from ..refusal import judge_completions
from .base import RunOptions, Transcript
from .single_turn import judge_name, steer_id


def write_transcripts(path: Path, transcripts: Sequence[Transcript]) -> None:
    """One JSON line per transcript."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for t in transcripts:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")


def read_transcripts(path: str | Path) -> list[Transcript]:
    """The transcripts of a JSONL written by :func:`write_transcripts` (``refusal-steer attack``).

    Raises:
        ConfigError: the file does not exist.
        CorruptFileError: a line is not JSON or not a transcript.
        EmptyDatasetError: the file holds no transcripts.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"replay file {path} does not exist",
                          fix="pass the .transcripts.jsonl that 'refusal-steer attack --out FILE.json' wrote next to FILE.json")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path}:{number} is not JSON: {exc}", fix="pass a transcripts JSONL written by 'refusal-steer attack'") from exc
        if not isinstance(row, dict):
            raise CorruptFileError(f"{path}:{number} is not a JSON object", fix="pass a transcripts JSONL written by 'refusal-steer attack'")
        out.append(Transcript.from_dict(row, f"{path}:{number}"))
    if not out:
        raise EmptyDatasetError(f"replay file {path} holds no transcripts", fix="run 'refusal-steer attack' first and replay its transcripts")
    return out


def replay(lm: LoadedModel, transcripts: Sequence[Transcript], interventions: Sequence[Intervention], judge: Judge,
           options: RunOptions) -> list[Transcript]:
    """Regenerate the target's answers of recorded transcripts under ``interventions`` (batched across transcripts).

    Returns:
        New transcripts: same attack messages, new answers and verdicts, ``params["replayed_from"]`` naming the
        original steer and judge, and no attempts (nothing is backtracked in a replay).
    """
    messages = [[dict(m) for m in t.messages] for t in transcripts]
    verdicts: list[list[bool]] = [[] for _ in transcripts]
    for step in range(max((len(t.generated) for t in transcripts), default=0)):
        rows = [(i, t.generated[step]) for i, t in enumerate(transcripts) if step < len(t.generated)]
        prompts = [messages[i][:index] for i, index in rows]
        answers = [c.text for c in generate(lm, prompts, interventions, max_new_tokens=options.max_new_tokens,
                                            batch_size=options.batch_size, progress=options.progress)]
        refused = judge_completions(judge, prompts, answers, conversation=True)
        for (i, index), answer, verdict in zip(rows, answers, refused):
            messages[i][index] = {"role": "assistant", "content": answer}
            verdicts[i].append(bool(verdict))
    steer, judged = steer_id(interventions), judge_name(judge)
    return [Transcript(attack=t.attack, goal_id=t.goal_id, objective=t.objective, categories=list(t.categories), messages=m,
                       generated=list(t.generated), refused=v,
                       params={**t.params, "replayed_from": {"steer": t.steer, "judge": t.judge}}, attempts=[],
                       judge=judged, steer=steer)
            for t, m, v in zip(transcripts, messages, verdicts)]
