"""A second judge over recorded attack transcripts, and how its verdicts agree with the first judge's.

Every attack success rate is reported under two judges (the substring list and the offline n-gram judge by
default): re-judging the transcripts costs no generation, so the second opinion is free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..agreement import two_judges
from ..refusal import judge_completions
from .base import Transcript


def rejudge(transcripts: Sequence[Transcript], judge: str) -> list[bool]:
    """The judge's refusal verdict on each transcript's last answer, reading the whole conversation before it."""
    prompts = [t.messages[: t.generated[-1]] for t in transcripts]
    texts = [t.messages[t.generated[-1]]["content"] for t in transcripts]
    return judge_completions(judge, prompts, texts, conversation=True)


def second_opinion(transcripts: Sequence[Transcript], judge2: str) -> dict[str, Any]:
    """Attack success under ``judge2`` for these transcripts, with its agreement with the recorded verdicts."""
    success = [not refused for refused in rejudge(transcripts, judge2)]
    return two_judges([t.success for t in transcripts], success, judge2)


__all__ = ["rejudge", "second_opinion", "two_judges"]
