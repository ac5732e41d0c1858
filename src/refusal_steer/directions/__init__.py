"""Refusal directions: difference-in-means, selection, refinement, and the saved-direction format (:mod:`.io`).

Importing this package registers the short forms over a saved direction folder (``ablate:DIR``,
``actadd:DIR``, ``cap:DIR``; :mod:`.steers`).
"""

from __future__ import annotations

from . import steers  # noqa: F401  (registers the short forms)
from .io import load_ablation_direction, load_direction

__all__ = ["load_ablation_direction", "load_direction"]
