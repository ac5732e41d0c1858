"""Refusal directions: difference-in-means, selection, refinement, the saved-direction format (:mod:`.io`), and the
attention heads that write the direction (:mod:`.heads`).

Importing this package registers the short forms over a saved direction folder (``ablate:DIR``,
``actadd:DIR``, ``cap:DIR``) and over a head ranking (``heads:HEADSDIR``; :mod:`.steers`).
"""

from __future__ import annotations

from . import steers  # noqa: F401  (registers the short forms)
from .heads import HeadRanking, head_steer, load_heads, rank_heads
from .io import load_ablation_direction, load_direction

__all__ = ["HeadRanking", "head_steer", "load_ablation_direction", "load_direction", "load_heads", "rank_heads"]
