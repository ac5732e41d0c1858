"""Datasets: pinned sources, a name registry, user JSONL/CSV files and deterministic splits.

Example:
    >>> from refusal_steer.data import load_dataset
    >>> train = load_dataset("advbench", split="train", seed=0)  # doctest: +SKIP
    >>> # never shares a prompt with ``train``, even though the two lists overlap:
    >>> test = load_dataset("harmful-curated", split="test", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from . import sources as _sources  # noqa: F401  (registers the pinned datasets)
from .records import (
    RECORD_KINDS,
    Conversation,
    Dataset,
    DatasetInfo,
    Instruction,
    JailbreakTemplate,
    LabelledResponse,
    MathProblem,
    MultipleChoice,
    Record,
    Text,
    kind_of,
    record_from_dict,
    record_text,
    record_to_dict,
)
from .registry import DatasetSpec, dataset, dataset_names, get_spec, list_datasets, load_dataset, load_prompts, register_dataset
from .sources import HARMBENCH_CATEGORIES, mmlu_subjects
from .splits import DEFAULT_FRACTIONS, assign_split, split_dataset
from .templates import fill_template, template_placeholders
from .text import normalize_text
from .user_files import load_user_file

__all__ = [
    "Instruction",
    "Conversation",
    "MultipleChoice",
    "MathProblem",
    "JailbreakTemplate",
    "LabelledResponse",
    "Text",
    "Record",
    "RECORD_KINDS",
    "Dataset",
    "DatasetInfo",
    "DatasetSpec",
    "kind_of",
    "record_text",
    "record_to_dict",
    "record_from_dict",
    "dataset",
    "register_dataset",
    "get_spec",
    "dataset_names",
    "load_dataset",
    "load_prompts",
    "list_datasets",
    "load_user_file",
    "DEFAULT_FRACTIONS",
    "assign_split",
    "split_dataset",
    "fill_template",
    "template_placeholders",
    "normalize_text",
    "HARMBENCH_CATEGORIES",
    "mmlu_subjects",
]
