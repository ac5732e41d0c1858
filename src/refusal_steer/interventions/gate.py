"""Conditional steering: apply interventions only to the prompts that meet a condition read at prefill.

After IBM's conditional activation steering (CAST, Lee et al. 2024): a *condition* vector is read at one
point while the prompt is computed, and the *behaviour* (any list of interventions) applies to the rows
whose prompt meets it, for the rest of that answer, every decoding step included. Here the condition is
the cosine similarity between the activation at each row's last prompt token and ``direction``,
compared with ``threshold`` (``above=True``: steer when it is above). The decision is kept in the
gate's per-sequence memory (:class:`refusal_steer.hooks.HookCall`), so it holds from prefill through
every decoding step of one ``generate`` call and is forgotten before the next batch.

Nested interventions at points the forward pass reaches *before* the gate's point run unsteered while
the prompt is computed (the decision does not exist yet) and steered on every later step. Batching does
not share a prompt prefix while a gate is installed (``prefix_safe``), so batched, one-by-one and cached
or uncached generation give the same tokens (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..hooks import HookCall, HookPoint, Intervention, validate_interventions
from ..models.loaded import LoadedModel
from ._vector import CastCache, as_vector, check_width
from .positions import prompt_indices
from .registry import FieldSpec, check_scalar, register_kind

FIRED = "fired"
"""The memory key holding the ``(batch,)`` bool decision once it is made."""


@dataclass(frozen=True, eq=False)
class Gate:
    """Apply ``interventions`` to the rows whose last prompt token's activation at ``point`` has cosine vs ``direction`` past ``threshold``.

    Args:
        direction: the condition vector ``(d,)`` (stored unit-norm).
        point: where the condition is read (one hook point).
        threshold: the cosine similarity the condition is compared with, in [-1, 1].
        interventions: the behaviour: any interventions (nested gates too).
        above: steer rows whose cosine is above ``threshold`` (default) or, when False, below it.

    Example:
        >>> harden = Gate(harmful_direction, "resid_pre.8", threshold=0.1, interventions=[Add(r, "resid_pre.12", coef=4)])  # doctest: +SKIP
    """

    kind: ClassVar[str] = "gate"
    positions: ClassVar[str] = "all"
    prefix_safe: ClassVar[bool] = False
    """A shared prefix would be computed before any row's decision exists, so its tokens could not be steered
    as they are when each prompt runs whole: batching computes prompts whole while a gate is installed."""

    direction: Tensor
    point: HookPoint
    threshold: float
    interventions: tuple[Intervention, ...]
    above: bool = True
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)
    _points: tuple[HookPoint, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", as_vector(self.direction, name="gate direction", unit=True))
        object.__setattr__(self, "point", check_scalar(self.kind, "point", "point", self.point))
        threshold = check_scalar(self.kind, "threshold", "float", self.threshold)
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"gate.threshold is a cosine similarity and must lie in [-1, 1], got {threshold}")
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "above", check_scalar(self.kind, "above", "bool", self.above))
        children = tuple(self.interventions) if isinstance(self.interventions, Sequence) else ()
        if not children:
            raise ConfigError("gate.interventions is empty", fix="give the interventions the gate applies")
        object.__setattr__(self, "interventions", children)
        points = [self.point, *[p for child in children for p in child.points]]
        object.__setattr__(self, "_points", tuple(dict.fromkeys(points)))

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return self._points

    def validate(self, lm: LoadedModel) -> None:
        check_width(self.direction, (self.point,), lm, "gate direction")
        validate_interventions(lm, self.interventions)

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        if call.point == self.point and call.positions.prompt_after == 0:
            self._decide(x, call)
        fired = call.memory.get(FIRED)
        out = x
        for j, child in enumerate(self.interventions):
            if call.point not in child.points:
                continue
            memory = call.memory.setdefault(("child", j), {})
            new = child(out, HookCall(point=call.point, positions=call.positions, memory=memory))
            if fired is not None and fired.shape[0] == x.shape[0]:
                out = torch.where(fired.view(-1, *([1] * (x.dim() - 1))), new, out)
        return out

    def _decide(self, x: Tensor, call: HookCall) -> None:
        """Record the per-row decision in the call in which each row's last prompt token is computed."""
        prompt = call.positions.prompt
        if prompt.shape != x.shape[:2] or not bool(prompt.any()):
            return
        _, from_end = prompt_indices(call.positions)
        last = prompt & from_end.eq(-1)
        has_last = last.any(dim=1)
        if not bool(has_last.any()):
            return
        index = last.float().argmax(dim=1)
        rows = x[torch.arange(x.shape[0], device=x.device), index].float()
        r = self._cast.get(self.direction, rows)
        cosine = (rows @ r) / rows.norm(dim=-1).clamp_min(1e-12)
        decision = cosine > self.threshold if self.above else cosine < self.threshold
        previous = call.memory.get(FIRED)
        if previous is not None and previous.shape == decision.shape:
            decision = torch.where(has_last, decision, previous)
        else:
            decision = decision & has_last
        call.memory[FIRED] = decision
        call.memory["cosine"] = cosine


def gate_decisions(memory: dict[Any, Any]) -> Tensor | None:
    """The ``(batch,)`` decision a gate recorded in its memory, or None before it decided."""
    return memory.get(FIRED)


register_kind(Gate, [
    FieldSpec("direction", "tensor", doc="condition vector"),
    FieldSpec("point", "scalar", "point", doc="where the condition is read"),
    FieldSpec("threshold", "scalar", "float", doc="cosine similarity threshold in [-1, 1]"),
    FieldSpec("interventions", "nested", doc="what the gate applies when it fires"),
    FieldSpec("above", "scalar", "bool", required=False, doc="fire above the threshold (true) or below it (false)"),
], doc="conditional steering: nested interventions only where the prompt meets a condition (CAST)")
