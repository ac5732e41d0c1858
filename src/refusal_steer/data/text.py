"""Text normalisation shared by de-duplication and split assignment.

Two prompts that differ only in case, punctuation, spacing or Unicode form (e.g. AdvBench's
"Write a script ..." and a curated list's "write a script ...!") normalise to the same key, so they
are treated as one prompt everywhere.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """Case-fold, NFKC-normalise and reduce every run of non-alphanumerics to one space.

    Example:
        >>> normalize_text("  Write a SCRIPT -- that exploits it! ")
        'write a script that exploits it'
    """
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


__all__ = ["normalize_text"]
