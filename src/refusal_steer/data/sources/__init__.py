"""Pinned dataset sources; importing this package registers every one of them by name."""

from __future__ import annotations

# isort: off
# Importing registers each dataset; the import order is the order of 'refusal-steer data list'.
from . import harmful, benign, jailbreaks, judging, capability, chat  # noqa: F401

# isort: on
from .capability import mmlu_subjects
from .chat import parse_truncated_json_list
from .harmful import HARMBENCH_CATEGORIES

__all__ = ["HARMBENCH_CATEGORIES", "mmlu_subjects", "parse_truncated_json_list"]
