"""Attack success rates: overall and per harm category, each with n, a 95% interval and the judge.

Attack success rate (ASR) = share of goals whose attack succeeded = 1 - the refusal rate of the target's last
answers (DESIGN.md, "Evaluation semantics"). A goal with several harm categories counts once in each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import EmptyDatasetError
from ...hooks import Intervention
from ...models.loaded import LoadedModel
from ..fluency import is_degenerate
from ..judges import Judge, get_judge
from ..record import ResultRecord, make_record
from ..stats import CiMethod, Rate, rate_from_bools
from .base import Attack, Goal, RunOptions, Transcript, goals_from_records
from .replay import replay


@dataclass(frozen=True)
class AttackResult:
    """One attack's success rate on one goal set, with everything behind it.

    Attributes:
        attack: the attack's name.
        params: its options.
        rate: the attack success rate (n, k, 95% interval).
        by_category: the same per harm category.
        degenerate: the share of goals whose last answer loops (:func:`~refusal_steer.evaluation.fluency.is_degenerate`):
            a looping answer holds no refusal phrase, so it counts as a success; this says how many such there are.
        judge: ``name@version``.
        transcripts: one per goal, in goal order.
        record: the rate as a :class:`~refusal_steer.evaluation.record.ResultRecord` (metric ``attack_success_rate``).
    """

    attack: str
    params: dict[str, Any]
    rate: Rate
    by_category: dict[str, Rate]
    degenerate: Rate
    judge: str
    transcripts: list[Transcript]
    record: ResultRecord

    def to_dict(self) -> dict[str, Any]:
        """The JSON written per attack by ``refusal-steer attack``."""
        def rate_dict(rate: Rate) -> dict[str, Any]:
            return {"asr": rate.value, "ci95": list(rate.ci95), "n": rate.n, "k": rate.k, "ci_method": rate.method}

        return {"attack": self.attack, **rate_dict(self.rate), "refusal_rate": 1 - self.rate.value if self.rate.n else None,
                "judge": self.judge, "params": self.params, "degenerate_rate": self.degenerate.value,
                "degenerate_k": self.degenerate.k, "degenerate_ci95": list(self.degenerate.ci95),
                "by_category": {name: rate_dict(r) for name, r in sorted(self.by_category.items())},
                "record": self.record.to_dict()}


def summarize(attack: str, params: dict[str, Any], transcripts: Sequence[Transcript], lm: LoadedModel,
              interventions: Sequence[Intervention], judge: Judge, *, ci: CiMethod = "wilson", seed: int = 0,
              dataset: str | None = None, split: str | None = None) -> AttackResult:
    """The :class:`AttackResult` of finished transcripts."""
    successes = [t.success for t in transcripts]
    rate = rate_from_bools(successes, method=ci, seed=seed)
    per: dict[str, list[bool]] = {}
    for t in transcripts:
        for category in dict.fromkeys(t.categories):
            per.setdefault(category, []).append(t.success)
    by_category = {name: rate_from_bools(flags, method=ci, seed=seed) for name, flags in per.items()}
    judged = f"{judge.name}@{judge.version}"
    degenerate = rate_from_bools([is_degenerate(t.messages[t.generated[-1]]["content"]) if t.generated else False for t in transcripts],
                                 method=ci, seed=seed)
    record = make_record("attack_success_rate", rate, lm, interventions, judge=judged, dataset=dataset, split=split, seed=seed)
    return AttackResult(attack=attack, params=params, rate=rate, by_category=by_category, degenerate=degenerate, judge=judged,
                        transcripts=list(transcripts), record=record)


def run_attack(lm: LoadedModel, attack: Attack, goals: Sequence[Goal] | Sequence[Any], interventions: Sequence[Intervention] = (), *,
               judge: str | Judge = "substring", max_new_tokens: int = 64, batch_size: int = 8, ci: CiMethod = "wilson",
               seed: int = 0, progress: bool = True, dataset: str | None = None, split: str | None = None,
               checkpoint: str | None = None) -> AttackResult:
    """Run ``attack`` on every goal against ``lm`` steered by ``interventions`` and report its success rate.

    Args:
        lm: the target model.
        attack: an attack from :func:`~.base.get_attack`.
        goals: :class:`~.base.Goal` values, or harmful instruction records / strings.
        interventions: the steer under test (the in-process attacker is never steered).
        judge: judge name or object; judges that read prompts see the whole conversation.
        max_new_tokens, batch_size: the target's answers.
        ci, seed: the interval.
        progress: progress bars.
        dataset, split: provenance for the record.
        checkpoint: a path where the attack saves its progress so a rerun resumes: single-turn attacks append
            finished goals (:class:`~.checkpoint.GoalCheckpoint`); Crescendo saves every goal's state after each step.

    Example:
        >>> result = run_attack(lm, get_attack("suffix"), load_dataset("advbench", split="test", limit=20))  # doctest: +SKIP
        >>> result.rate.value, result.rate.ci95, result.judge  # doctest: +SKIP
    """
    judge_obj = get_judge(judge)
    targets = list(goals) if all(isinstance(g, Goal) for g in goals) else goals_from_records(goals)
    if not targets:
        raise EmptyDatasetError("no goals to attack", fix="pass at least one harmful instruction")
    transcripts = attack.run(lm, targets, interventions, judge_obj, RunOptions(max_new_tokens, batch_size, progress, checkpoint))
    return summarize(attack.name, attack.params(), transcripts, lm, interventions, judge_obj, ci=ci, seed=seed, dataset=dataset, split=split)


def replay_attack(lm: LoadedModel, transcripts: Sequence[Transcript], interventions: Sequence[Intervention] = (), *,
                  judge: str | Judge = "substring", max_new_tokens: int = 64, batch_size: int = 8, ci: CiMethod = "wilson",
                  seed: int = 0, progress: bool = True, dataset: str | None = None, split: str | None = None) -> list[AttackResult]:
    """Replay recorded transcripts under ``interventions`` (:func:`~.replay.replay`); one result per attack in the file."""
    judge_obj = get_judge(judge)
    replayed = replay(lm, transcripts, interventions, judge_obj, RunOptions(max_new_tokens, batch_size, progress))
    results = []
    for name in dict.fromkeys(t.attack for t in replayed):
        group = [t for t in replayed if t.attack == name]
        params = {k: v for k, v in group[0].params.items() if k not in ("template", "template_source", "examples", "suffix", "backtracks")}
        results.append(summarize(name, {**params, "replay": True}, group, lm, interventions, judge_obj, ci=ci, seed=seed,
                                 dataset=dataset, split=split))
    return results
