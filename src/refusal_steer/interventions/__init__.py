"""Interventions as small frozen values: ablate, add, set-projection, clamp, with a shared position selector.

Each kind lives in its own module and implements the :class:`~refusal_steer.hooks.Intervention`
protocol; install a list of them with :func:`refusal_steer.hooks.apply`.
"""

from __future__ import annotations

from .ablate import Ablate, all_layers_ablation, residual_writes
from .add import Add
from .clamp import Clamp
from .positions import PositionSpec, parse_positions, position_mask
from .project import SetProjection
from .steer_file import load_steer_file, parse_steer, register_kind, save_steer_file, validate_all

__all__ = [
    "Ablate",
    "Add",
    "Clamp",
    "PositionSpec",
    "SetProjection",
    "all_layers_ablation",
    "load_steer_file",
    "parse_positions",
    "parse_steer",
    "position_mask",
    "register_kind",
    "residual_writes",
    "save_steer_file",
    "validate_all",
]
