"""Evaluation: refusal rate under pluggable judges, KL on harmless prompts, capability (MMLU, ARC, GSM8K).

Every figure is a :class:`Rate` (value, 95% interval, n, k, interval method) and every refusal figure
carries the judge's name and version.

Example:
    >>> from refusal_steer.evaluation import evaluate_refusal, agreement_with_labels
    >>> result = evaluate_refusal(lm, prompts, parse_steer("ablate:runs/dir", lm))  # doctest: +SKIP
    >>> result.rate, result.judge_version  # doctest: +SKIP
"""

from __future__ import annotations

from .agreement import Agreement, agreement, agreement_with_labels, verdict_agreement
from .capability import (
    MathResult,
    MultipleChoiceResult,
    evaluate_gsm8k,
    evaluate_multiple_choice,
    extract_final_number,
    mc_user_message,
    stratified_subset,
)
from .judges import (
    ClassifierJudge,
    Judge,
    JudgeError,
    LlmJudge,
    SubstringJudge,
    get_judge,
    judge_names,
    parse_judge_options,
    register_judge,
)
from .kl import KlResult, evaluate_kl
from .refusal import (
    RefusalResult,
    conversation_text,
    evaluate_refusal,
    evaluate_refusal_per_prompt,
    judge_completions,
    judge_reads_prompt,
    prompt_text,
)
from .record import ResultRecord, make_record
from .stats import Rate, bootstrap, mean_with_ci, rate_from_bools, wilson

__all__ = [
    "ResultRecord",
    "make_record",
    "Agreement",
    "ClassifierJudge",
    "Judge",
    "JudgeError",
    "KlResult",
    "LlmJudge",
    "MathResult",
    "MultipleChoiceResult",
    "Rate",
    "RefusalResult",
    "SubstringJudge",
    "agreement",
    "agreement_with_labels",
    "verdict_agreement",
    "bootstrap",
    "conversation_text",
    "evaluate_gsm8k",
    "evaluate_kl",
    "evaluate_multiple_choice",
    "evaluate_refusal",
    "evaluate_refusal_per_prompt",
    "extract_final_number",
    "get_judge",
    "judge_completions",
    "judge_names",
    "judge_reads_prompt",
    "mc_user_message",
    "mean_with_ci",
    "parse_judge_options",
    "prompt_text",
    "rate_from_bools",
    "register_judge",
    "stratified_subset",
    "wilson",
]
