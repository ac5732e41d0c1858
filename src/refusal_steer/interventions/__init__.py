"""The steer language: interventions as small frozen values, registered kinds, specs, short forms, fingerprints.

Each kind lives in its own module (ablate, add, project, cap, gate and the conditions a gate reads; the SAE splice in
:mod:`refusal_steer.sae.splice`) and implements the :class:`~refusal_steer.hooks.Intervention` protocol;
install a list of them with :func:`refusal_steer.hooks.apply`. :mod:`.registry` turns them into specs
(steer files) and fingerprints; short forms over saved folders (``ablate:DIR``...) are registered by the
layers that own those formats.
"""

from __future__ import annotations

from .ablate import Ablate, all_layers_ablation, project_out, residual_writes
from .add import Add
from .cap import ProjectionCap
from .conditions import Condition, Cosine, Probe, Projection
from .gate import Gate, GateReport, gate_decisions
from .positions import PositionSpec, parse_positions, position_mask, steered_mask
from .project import SetProjection
from .registry import (
    FieldSpec,
    ResourceType,
    ShortForm,
    conditions,
    describe,
    fingerprint,
    from_spec,
    kind_spec,
    kinds,
    register_condition,
    register_kind,
    register_resource,
    register_short_form,
    short_forms,
    short_forms_help,
    to_spec,
)
from .steer_file import load_steer_file, parse_steer, save_steer_file, validate_all

__all__ = [
    "Ablate",
    "Add",
    "Condition",
    "Cosine",
    "FieldSpec",
    "Gate",
    "GateReport",
    "PositionSpec",
    "Probe",
    "Projection",
    "ProjectionCap",
    "ResourceType",
    "SetProjection",
    "ShortForm",
    "all_layers_ablation",
    "conditions",
    "describe",
    "fingerprint",
    "from_spec",
    "gate_decisions",
    "kind_spec",
    "kinds",
    "load_steer_file",
    "parse_positions",
    "parse_steer",
    "position_mask",
    "project_out",
    "register_condition",
    "register_kind",
    "register_resource",
    "register_short_form",
    "residual_writes",
    "save_steer_file",
    "short_forms",
    "short_forms_help",
    "steered_mask",
    "to_spec",
    "validate_all",
]
