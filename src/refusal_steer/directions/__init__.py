"""Refusal directions: difference-in-means, selection, and the saved-direction format (:mod:`.io`)."""

from __future__ import annotations

from .io import load_direction

__all__ = ["load_direction"]
