"""Capability under steering: multiple choice (MMLU, ARC) by answer-letter log-likelihood, GSM8K by exact match.

Multiple choice follows the standard zero-shot MMLU format (Hendrycks et al. 2021) inside the model's
chat template: the user turn holds the subject header, the question and the lettered options; the
assistant turn is prefilled with ``Answer:`` and the prediction is the letter (`` A``, `` B``, ...) with
the highest log-likelihood as its continuation. One forward pass per question when every letter is
a single token (true for the usual BPE vocabularies), else one per option.

The question subset is stratified by subject and chosen by hashing ``(seed, record id)``, so it is
the same on every machine, does not depend on dataset order, and a larger ``n`` keeps every question
of a smaller one per subject.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..errors import ConfigError
from ..generation import Completion, generate
from ..hooks import Intervention
from ..models.chat import format_chat, tokenize_exact
from ..models.loaded import LoadedModel
from ._forward import continuation_logprobs, last_logprobs
from .record import ResultRecord, make_record
from .stats import CiMethod, Rate, rate_from_bools

logger = logging.getLogger(__name__)

T = TypeVar("T")
LETTERS = "ABCDEFGHIJ"
ANSWER_PREFILL = "Answer:"


def _tqdm(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def stratified_subset(records: Sequence[T], n: int | None, *, seed: int = 0, stratum: Callable[[T], str] | None = None, key: Callable[[T], str] | None = None) -> list[T]:
    """A deterministic subset of ``n`` records, allocated to strata in proportion to their sizes.

    Quotas use the largest-remainder method (ties to the larger stratum, then by name); inside a
    stratum records are taken in the order of ``sha256(seed:key)``. The subset keeps input order.

    Args:
        records: the pool (e.g. all MMLU test questions).
        n: how many to keep; ``None`` or ``>= len(records)`` keeps all.
        seed: changes which records are taken, not how many per stratum.
        stratum: record -> stratum name (default ``record.subject``).
        key: record -> stable identity (default ``record.id``).

    Example:
        >>> from types import SimpleNamespace as R
        >>> pool = [R(id=str(i), subject="a" if i < 80 else "b") for i in range(100)]
        >>> sorted(r.subject for r in stratified_subset(pool, 10)).count("a")
        8
    """
    records = list(records)
    if n is None or n >= len(records):
        return records
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    stratum = stratum or (lambda r: r.subject)  # type: ignore[attr-defined]
    key = key or (lambda r: r.id)  # type: ignore[attr-defined]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        groups[stratum(record)].append(i)
    total = len(records)
    exact = {name: n * len(idx) / total for name, idx in groups.items()}
    quota = {name: math.floor(x) for name, x in exact.items()}
    left = n - sum(quota.values())
    for name in sorted(groups, key=lambda s: (-(exact[s] - quota[s]), -len(groups[s]), s))[:left]:
        quota[name] += 1
    chosen: list[int] = []
    for name, idx in groups.items():
        ranked = sorted(idx, key=lambda i: _rank(seed, key(records[i])))
        chosen.extend(ranked[: quota[name]])
    return [records[i] for i in sorted(chosen)]


def mc_user_message(question: str, choices: Sequence[str], subject: str | None = None) -> str:
    """The zero-shot multiple-choice user turn (Hendrycks et al. 2021 format).

    Example:
        >>> print(mc_user_message("2 + 2 =", ["3", "4"], "elementary_mathematics"))
        The following is a multiple choice question (with answers) about elementary mathematics.
        <BLANKLINE>
        2 + 2 =
        A. 3
        B. 4
    """
    if len(choices) > len(LETTERS):
        raise ConfigError(f"{len(choices)} choices; at most {len(LETTERS)} are supported")
    header = "The following is a multiple choice question (with answers)"
    header += f" about {subject.replace('_', ' ')}." if subject else "."
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{header}\n\n{question.strip()}\n{options}"


@dataclass(frozen=True)
class MultipleChoiceResult:
    """Accuracy on multiple-choice questions with its 95% interval, and every question's scores.

    Attributes:
        accuracy: share answered correctly (``k`` correct of ``n``).
        items: per question ``id``, ``subject``, ``answer``, ``predicted``, ``correct``, ``logprobs``
            (one per option) and ``letter_mass`` (probability on the option letters; low values mean
            the model does not follow the format).
        by_subject: accuracy per subject.
    """

    accuracy: Rate
    items: list[dict[str, Any]] = field(default_factory=list)
    by_subject: dict[str, Rate] = field(default_factory=dict)
    record: ResultRecord | None = None
    """The accuracy as a :class:`~refusal_steer.evaluation.record.ResultRecord`."""

    @property
    def mean_letter_mass(self) -> float:
        masses = [i["letter_mass"] for i in self.items if i.get("letter_mass") is not None]
        return sum(masses) / len(masses) if masses else math.nan


def evaluate_multiple_choice(
    lm: LoadedModel,
    questions: Sequence[Any],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 8,
    ci: CiMethod = "wilson",
    seed: int = 0,
    system: str | None = None,
    progress: bool = True,
    dataset: str | None = None,
    split: str | None = None,
) -> MultipleChoiceResult:
    """Accuracy of ``lm`` (with ``interventions``) on multiple-choice records by answer-letter log-likelihood.

    Args:
        lm: the model.
        questions: ``MultipleChoice`` records (``question``, ``choices``, ``answer``, ``subject``, ``id``);
            subset them with :func:`stratified_subset` first.
        interventions: installed for every forward pass.
        batch_size: questions per forward batch.
        ci: interval method of the accuracy.
        seed: bootstrap seed (when ``ci="bootstrap"``).
        system: optional system prompt.
        progress: show a progress bar.

    Returns:
        A :class:`MultipleChoiceResult`.

    Example:
        >>> mmlu = stratified_subset(load_dataset("mmlu"), 500)  # doctest: +SKIP
        >>> evaluate_multiple_choice(lm, mmlu).accuracy  # doctest: +SKIP
    """
    questions = list(questions)
    if not questions:
        raise ConfigError("no questions to evaluate")
    tok = lm.tokenizer
    contexts = [
        tokenize_exact(tok, format_chat(tok, mc_user_message(q.question, q.choices, q.subject), system=system) + ANSWER_PREFILL)
        for q in questions
    ]
    n_options = max(len(q.choices) for q in questions)
    letter_ids = [tokenize_exact(tok, f" {LETTERS[i]}") for i in range(n_options)]
    single = all(len(ids) == 1 for ids in letter_ids) and len({ids[0] for ids in letter_ids}) == n_options
    bar = _tqdm(len(questions), "multiple choice", progress)
    with bar:
        if single:
            logprobs = last_logprobs(lm, contexts, interventions=interventions, batch_size=batch_size, progress=bar)
            flat = [ids[0] for ids in letter_ids]
            scores = [logprobs[i, flat[: len(q.choices)]].tolist() for i, q in enumerate(questions)]
        else:
            logger.info("answer letters are multi-token for this tokenizer; scoring each option separately")
            pairs = [(i, j) for i, q in enumerate(questions) for j in range(len(q.choices))]
            bar.total = len(pairs)
            flat_scores = continuation_logprobs(
                lm, [contexts[i] for i, _ in pairs], [letter_ids[j] for _, j in pairs],
                interventions=interventions, batch_size=batch_size, progress=bar,
            )
            scores = [[] for _ in questions]
            for (i, _j), s in zip(pairs, flat_scores):
                scores[i].append(s)
    items = []
    for q, s in zip(questions, scores):
        predicted = int(torch.tensor(s).argmax())
        items.append({
            "id": q.id,
            "subject": q.subject,
            "answer": LETTERS[q.answer],
            "predicted": LETTERS[predicted],
            "correct": predicted == q.answer,
            "logprobs": [round(x, 6) for x in s],
            "letter_mass": float(torch.tensor(s).exp().sum()),
        })
    correct = [item["correct"] for item in items]
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for item in items:
        by_subject[item["subject"]].append(item["correct"])
    accuracy = rate_from_bools(correct, method=ci, seed=seed)
    return MultipleChoiceResult(
        accuracy=accuracy,
        items=items,
        by_subject={s: rate_from_bools(v, method=ci, seed=seed) for s, v in sorted(by_subject.items())},
        record=make_record(f"{dataset or 'multiple_choice'}_accuracy", accuracy, lm, interventions, dataset=dataset, split=split, seed=seed),
    )


_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
GSM8K_INSTRUCTION = "Solve the problem step by step. End with a line of the form 'The answer is N'."


def normalize_number(text: str) -> str | None:
    """``"1,600.00"`` -> ``"1600"``; ``None`` when ``text`` is not a number.

    Example:
        >>> normalize_number("1,600.00"), normalize_number("-3.5"), normalize_number("x")
        ('1600', '-3.5', None)
    """
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def extract_final_number(text: str) -> str | None:
    """The number after the last "The answer is", else the last number in ``text`` (normalised).

    Example:
        >>> extract_final_number("3 + 4 = 7. The answer is 1,207."), extract_final_number("so 12 apples")
        ('1207', '12')
    """
    found = _ANSWER_IS.findall(text)
    if found:
        return normalize_number(found[-1])
    numbers = [n for n in _NUMBER.findall(text) if any(c.isdigit() for c in n)]
    return normalize_number(numbers[-1]) if numbers else None


@dataclass(frozen=True)
class MathResult:
    """Exact-match accuracy of the final number on math word problems, and every completion."""

    accuracy: Rate
    items: list[dict[str, Any]]
    completions: list[Completion]
    record: ResultRecord | None = None
    """The accuracy as a :class:`~refusal_steer.evaluation.record.ResultRecord`."""


def evaluate_gsm8k(
    lm: LoadedModel,
    problems: Sequence[Any],
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    ci: CiMethod = "wilson",
    seed: int = 0,
    progress: bool = True,
    dataset: str | None = "gsm8k",
    split: str | None = None,
) -> MathResult:
    """GSM8K accuracy: greedy zero-shot chain of thought, exact match of the final number.

    Slow on CPU (hundreds of generated tokens per problem); use a small ``problems`` subset there.

    Example:
        >>> evaluate_gsm8k(lm, load_dataset("gsm8k", limit=50)).accuracy  # doctest: +SKIP
    """
    problems = list(problems)
    if not problems:
        raise ConfigError("no problems to evaluate")
    prompts = [f"{p.question.strip()}\n\n{GSM8K_INSTRUCTION}" for p in problems]
    completions = generate(lm, prompts, interventions, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    items = []
    for problem, completion in zip(problems, completions):
        predicted = extract_final_number(completion.text)
        gold = normalize_number(problem.answer)
        items.append({"id": problem.id, "answer": gold, "predicted": predicted, "correct": predicted is not None and predicted == gold})
    accuracy = rate_from_bools([i["correct"] for i in items], method=ci, seed=seed)
    return MathResult(accuracy=accuracy, items=items, completions=completions,
                      record=make_record("gsm8k_accuracy", accuracy, lm, interventions, dataset=dataset, split=split, seed=seed))
