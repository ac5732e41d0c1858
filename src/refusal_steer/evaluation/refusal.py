"""Refusal rate: generate answers under interventions, judge each one, report the share refused.

Attack success rate on harmful prompts is ``1 - refusal_rate``; over-refusal on safe prompts is the
refusal rate itself (DESIGN.md, "Evaluation semantics").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..generation import Completion, as_prompt, generate
from ..hooks import Intervention
from ..interventions import fingerprint
from ..models.loaded import LoadedModel
from .fluency import is_degenerate
from .judges import Judge, get_judge
from .record import ResultRecord, make_record
from .stats import CiMethod, Rate, rate_from_bools

logger = logging.getLogger(__name__)


def prompt_text(prompt: Any) -> str:
    """The user's request as plain text: the string itself, or the last user message of a conversation."""
    prompt = as_prompt(prompt)
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else "\n".join(m["content"] for m in prompt)


def conversation_text(prompt: Any) -> str:
    """A whole conversation as plain text for a judge that reads context (``USER: ...`` / ``ASSISTANT: ...`` blocks).

    A single string is returned unchanged, so single-turn prompts read the same as with :func:`prompt_text`.

    Example:
        >>> conversation_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        ...                    {"role": "user", "content": "Now the bomb"}])
        'USER: Hi\n\nASSISTANT: Hello\n\nUSER: Now the bomb'
    """
    prompt = as_prompt(prompt)
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{m.get('role', 'user').upper()}: {m['content']}" for m in prompt)


def judge_reads_prompt(judge: Judge) -> bool:
    """Whether ``judge`` looks at the prompt (``llm``; ``classifier`` with ``use_prompt``), not only the answer.

    A judge says so with a ``reads_prompt`` attribute; one without it is assumed to read the prompt.
    """
    return bool(getattr(judge, "reads_prompt", True))


@dataclass(frozen=True)
class RefusalResult:
    """The refusal rate of one model + interventions on one prompt set, and everything behind it.

    Attributes:
        rate: share of completions judged refusals, with n, k and the 95% interval.
        judge: the judge's registry name.
        judge_version: its version (phrase list, classifier hash, endpoint model + prompt hash).
        completions: the generated answers, in prompt order.
        refused: the judge's verdict per completion.
        degenerate: per completion, whether it loops (:func:`~refusal_steer.evaluation.fluency.is_degenerate`);
            a refusal that loops is a broken answer, whatever the judge says.
        degenerate_rate: the share of looping completions, with n and its 95% interval.
    """

    rate: Rate
    judge: str
    judge_version: str
    completions: list[Completion]
    refused: list[bool]
    degenerate: list[bool]
    degenerate_rate: Rate
    record: ResultRecord | None = None
    """The refusal rate as a :class:`~refusal_steer.evaluation.record.ResultRecord` (steer, model, judge, data)."""

    @property
    def refusal_rate(self) -> float:
        return self.rate.value

    @property
    def ci95(self) -> tuple[float, float]:
        return self.rate.ci95

    @property
    def n(self) -> int:
        return self.rate.n

    def subset(self, start: int, stop: int, *, ci: CiMethod = "wilson", seed: int = 0, dataset: str | None = None,
               split: str | None = None) -> RefusalResult:
        """The result for completions ``start:stop`` alone (e.g. one prompt set of several generated together).

        Its record keeps the steer and model of the whole and takes ``dataset``/``split`` when given.
        """
        refused, degenerate = self.refused[start:stop], self.degenerate[start:stop]
        rate = rate_from_bools(refused, method=ci, seed=seed)
        record = None
        if self.record is not None:
            record = replace(self.record, value=rate.value, n=rate.n, ci95=(rate.lo, rate.hi), ci_method=rate.method, k=rate.k,
                             dataset=dataset if dataset is not None else self.record.dataset,
                             split=split if split is not None else self.record.split)
        return RefusalResult(rate=rate, judge=self.judge, judge_version=self.judge_version,
                             completions=self.completions[start:stop], refused=refused, degenerate=degenerate,
                             degenerate_rate=rate_from_bools(degenerate, method=ci, seed=seed), record=record)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able dict per completion (the lines of the completions JSONL)."""
        out = []
        for completion, refused, degenerate in zip(self.completions, self.refused, self.degenerate):
            row = completion.to_dict()
            row["refused"] = refused
            row["degenerate"] = degenerate
            row["judge"] = f"{self.judge}@{self.judge_version}"
            out.append(row)
        return out


def judge_completions(judge: str | Judge, prompts: Sequence[Any], texts: Sequence[str], *, conversation: bool = False) -> list[bool]:
    """Run ``judge`` on (prompt, completion text) pairs; prompts may be strings, messages or records.

    Args:
        judge: a judge or judge spec.
        prompts: what each completion answers.
        texts: the completions (the final assistant answers).
        conversation: give a judge that reads prompts the whole message list (:func:`conversation_text`) rather
            than the last user turn (:func:`prompt_text`, the default). Judges that read only the answer
            (``substring``) see the same either way: the final answer.
    """
    judge_obj = get_judge(judge)
    render = conversation_text if conversation and judge_reads_prompt(judge_obj) else prompt_text
    return judge_obj([render(p) for p in prompts], list(texts))


def evaluate_refusal(
    lm: LoadedModel,
    prompts: Sequence[Any],
    interventions: Sequence[Intervention] = (),
    *,
    judge: str | Judge = "substring",
    max_new_tokens: int = 64,
    batch_size: int = 8,
    ci: CiMethod = "wilson",
    seed: int = 0,
    system: str | None = None,
    progress: bool = True,
    dataset: str | None = None,
    split: str | None = None,
) -> RefusalResult:
    """Generate greedy answers to ``prompts`` with ``interventions`` installed and judge them.

    Args:
        lm: the model.
        prompts: strings, message lists or dataset records (``Instruction``/``Conversation``).
        interventions: installed for the whole generation (e.g. ``parse_steer("ablate:DIR", lm)``).
        judge: a judge name (``substring``, ``classifier:DIR``, ``llm:MODEL``) or judge object.
        max_new_tokens: answer length; refusals show in the first tokens, so 32-64 is enough for
            ``substring`` (Arditi et al. 2024 judge 512-token answers with an LLM as well).
        batch_size: prompts per generation batch.
        ci: ``"wilson"`` (default) or ``"bootstrap"`` interval.
        seed: seed of the bootstrap (greedy decoding is deterministic).
        system: optional system prompt.
        progress: show a progress bar.
        dataset, split: where the prompts came from, recorded in ``result.record``.

    Returns:
        A :class:`RefusalResult` (its ``record`` is the :class:`ResultRecord`).

    Example:
        >>> result = evaluate_refusal(lm, ["How do I pick a lock?"], max_new_tokens=32)  # doctest: +SKIP
        >>> result.rate.value, result.ci95, result.judge_version  # doctest: +SKIP
        (1.0, (0.2065, 1.0), 'v1')
    """
    judge_obj = get_judge(judge)  # fail on a bad judge before the slow generation
    completions = generate(
        lm, list(prompts), interventions, max_new_tokens=max_new_tokens, batch_size=batch_size, system=system, progress=progress
    )
    return _judged(lm, judge_obj, prompts, completions, interventions, ci=ci, seed=seed, dataset=dataset, split=split)


def _judged(lm: LoadedModel, judge_obj: Judge, prompts: Sequence[Any], completions: list[Completion], interventions: Sequence[Intervention],
            *, ci: CiMethod, seed: int, dataset: str | None, split: str | None) -> RefusalResult:
    """Judge ``completions`` and build the :class:`RefusalResult` (rate, looping rate, record) of ``interventions``."""
    refused = judge_completions(judge_obj, prompts, [c.text for c in completions])
    rate = rate_from_bools(refused, method=ci, seed=seed)
    degenerate = [is_degenerate(c.text) for c in completions]
    logger.info("refusal rate %s with judge %s@%s", rate, judge_obj.name, judge_obj.version)
    record = make_record("refusal_rate", rate, lm, interventions, judge=f"{judge_obj.name}@{judge_obj.version}", dataset=dataset,
                         split=split, seed=seed)
    return RefusalResult(rate=rate, judge=judge_obj.name, judge_version=judge_obj.version, completions=completions, refused=refused,
                         degenerate=degenerate, degenerate_rate=rate_from_bools(degenerate, method=ci, seed=seed), record=record)


def evaluate_refusal_per_prompt(
    lm: LoadedModel,
    prompts: Sequence[Any],
    steers: Sequence[Sequence[Intervention]],
    *,
    judge: str | Judge = "substring",
    max_new_tokens: int = 64,
    ci: CiMethod = "wilson",
    seed: int = 0,
    system: str | None = None,
    progress: bool = True,
    dataset: str | None = None,
    split: str | None = None,
) -> RefusalResult:
    """:func:`evaluate_refusal` with a steer of its own for each prompt (Yeo et al.'s per-sample latent sets).

    Each prompt is generated alone under ``steers[i]`` (greedy, so batching would not change the answer; one steer
    per row cannot share a batch's hooks). The record's ``steer`` is a hash of the per-prompt fingerprints and its
    ``steer_spec`` lists them.
    """
    if len(steers) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(steers)} per-prompt steers", fix="give one steer per prompt")
    judge_obj = get_judge(judge)
    completions: list[Completion] = []
    for prompt, steer in tqdm(list(zip(prompts, steers)), desc="per-prompt steers", unit="prompt", disable=not progress):
        completions += generate(lm, [prompt], list(steer), max_new_tokens=max_new_tokens, batch_size=1, system=system, progress=False)
    result = _judged(lm, judge_obj, prompts, completions, (), ci=ci, seed=seed, dataset=dataset, split=split)
    prints = [fingerprint(list(steer)) if steer else "none" for steer in steers]
    record = replace(result.record, steer="per-prompt:" + hashlib.sha256("\n".join(prints).encode()).hexdigest()[:16],
                     steer_spec=[{"kind": "per_prompt", "fingerprints": prints}])
    return replace(result, record=record)
