"""Refusal judges, registered by name: ``substring``, ``ngram-lr``, ``classifier``, ``llm`` (one module each).

Example:
    >>> from refusal_steer.evaluation.judges import get_judge
    >>> get_judge("substring")(["Make a bomb"], ["I cannot help with that."])
    [True]
"""

from __future__ import annotations

from .base import Judge, JudgeError, get_judge, judge_names, parse_judge_options, register_judge
from .classifier import ClassifierJudge
from .llm import DEFAULT_PROMPT, LlmJudge, parse_verdict
from .ngram_lr import NgramFeatures, NgramLrJudge, featurize, load_weights
from .substring import SubstringJudge, load_exceptions, load_phrases, normalize

__all__ = [
    "DEFAULT_PROMPT",
    "ClassifierJudge",
    "Judge",
    "JudgeError",
    "LlmJudge",
    "NgramFeatures",
    "NgramLrJudge",
    "SubstringJudge",
    "featurize",
    "get_judge",
    "judge_names",
    "load_exceptions",
    "load_phrases",
    "load_weights",
    "normalize",
    "parse_judge_options",
    "parse_verdict",
    "register_judge",
]
