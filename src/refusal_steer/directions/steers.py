"""The short forms over a saved direction folder, registered here because this layer owns the format.

- ``ablate:DIR[:positions=P]``: ablation at every residual write of the direction ``ablate:DIR`` means
  (:func:`.io.load_ablation_direction`: the refined direction when ``DIR`` has one, else the selected one;
  ``ablate:DIR/direction.safetensors`` names the selected one);
- ``actadd:DIR[:COEF][:coef=C][:positions=P]``: activation addition of ``DIR/actadd.safetensors`` (or the
  direction) at its point, with the coefficient and positions calibrated at selection unless given;
- ``cap:DIR[:positions=P]``: the projection cap of ``DIR/cap.safetensors`` at ``resid_pre`` of every layer;
- ``clamp:DIR``: the old name of ``cap:DIR`` (still read, with a deprecation warning);
- ``heads:HEADSDIR[:n=N][:coef=C][:positions=P]``: ITI-style head steering (:func:`.heads.head_steer`) at the
  top ``n`` heads of a ranking written by ``refusal-steer heads`` (``n`` defaults to 32, or every head of a
  smaller model; ``coef`` to Li et al.'s 15).
"""

from __future__ import annotations

from typing import Any

from ..hooks import Intervention, residual_writes
from ..interventions import Ablate, ShortForm, register_short_form
from ..models.loaded import LoadedModel
from .cap import load_cap
from .heads import DEFAULT_COEF, DEFAULT_N, head_steer, load_heads
from .io import actadd_intervention, load_ablation_direction


def resolve_ablate(folder: str, options: dict[str, Any], lm: LoadedModel) -> list[Intervention]:
    """``ablate:DIR``: the pipeline's best ablation direction at every residual write."""
    saved = load_ablation_direction(folder)
    return [Ablate(saved.direction, residual_writes(lm), positions=options.get("positions", "all"))]


def resolve_actadd(folder: str, options: dict[str, Any], lm: LoadedModel) -> list[Intervention]:
    """``actadd:DIR``: the calibrated activation addition (coefficient and positions overridable)."""
    return [actadd_intervention(folder, options.get("coef"), options.get("positions"))]


def resolve_cap(folder: str, options: dict[str, Any], lm: LoadedModel) -> list[Intervention]:
    """``cap:DIR``: the selected projection cap at ``resid_pre`` of every layer."""
    return [load_cap(folder).intervention(positions=options.get("positions", "all"))]


def resolve_heads(folder: str, options: dict[str, Any], lm: LoadedModel) -> list[Intervention]:
    """``heads:HEADSDIR``: one activation addition per top-``n`` head of the saved ranking (checked against ``lm``)."""
    ranking = load_heads(folder, lm)
    n = options.get("n", min(DEFAULT_N, ranking.n_layers * ranking.n_heads))
    return [*head_steer(ranking, n, options.get("coef", DEFAULT_COEF), positions=options.get("positions", "all"))]


register_short_form(ShortForm("ablate", resolve_ablate, {"positions": "positions"},
                              help="ablate the direction (the refined one when DIR has it) at every residual write"))
register_short_form(ShortForm("actadd", resolve_actadd, {"coef": "float", "positions": "positions"}, positional=("coef",),
                              help="add the direction at its layer, coefficient calibrated at selection"))
register_short_form(ShortForm("cap", resolve_cap, {"positions": "positions"},
                              help="cap the projection at the harmless level at resid_pre of every layer"))
register_short_form(ShortForm("clamp", resolve_cap, {"positions": "positions"}, help="old name of cap:DIR",
                              deprecated="write cap:DIR (clamp now means SAE latent clamping)"))
register_short_form(ShortForm("heads", resolve_heads, {"n": "int", "coef": "float", "positions": "positions"},
                              help=f"add ITI's shift (coef x sigma x unit theta) at the top n heads of a 'refusal-steer heads' ranking "
                                   f"(n={DEFAULT_N}, coef={DEFAULT_COEF:g} unless given)"))
