"""Conditional steering: apply a steer only to the prompts whose activations meet a condition, for their whole answer.

After IBM's conditional activation steering (CAST, Lee et al. 2024) and the conditional clamping of
O'Brien et al. 2024 ("safe prompts pay less"): a :class:`Gate` reads a *condition* (:mod:`.conditions`:
a projection, a cosine, a linear probe, an SAE latent) at one ``point`` while each prompt is computed,
aggregates its per-token score over the prompt (``reduce``) and, for every row whose score is above
``threshold`` (below or at it with ``invert``), lets the wrapped ``steer`` act on that row's answer.

What is read. The read set of a row is its prompt tokens from index ``skip_tokens`` on (counted from the
true start of the prompt, a shared prefix included, so a chat template's fixed system prompt can be left
out). ``reduce`` is ``last`` (the score at the last prompt token, the one that produces the first answer
token), ``max`` or ``mean`` over the read set. A row whose read set is empty (a prompt no longer than
``skip_tokens``) has no score and is never steered, inverted or not.

What is steered. On a fired row the wrapped interventions act, each at its own points and with its own
positions, on the forward passes that produce the answer: every generated token (every decoding step),
and the last prompt token at the points the forward pass reaches at or after the gate's point (earlier
points have already run on that token when the decision is made). Earlier prompt tokens are never
steered, so the prompt a condition reads is the unsteered one and a shared prefix, computed once for the
whole batch before any decision exists, is exactly what each row would compute alone. Rows that do not
fire get the wrapped interventions' input back unchanged, bit for bit.

State. The decision is made once per row at prefill, kept in the gate's per-sequence memory
(:class:`refusal_steer.hooks.HookCall`), reused by every decoding step and forgotten when the next batch
or ``generate`` call starts. With a shared prefix the prefix call's partial aggregate (sum, count,
maximum) is kept and combined with each row's own tokens, so ``max`` and ``mean`` cover the full
prompt. :attr:`Gate.last_fired` and the counts report what fired.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..errors import ConfigError
from ..hooks import HookCall, HookPoint, Intervention, Positions, Site, validate_interventions
from ..models.loaded import LoadedModel
from .positions import prompt_indices
from .registry import FieldSpec, check_scalar, conditions, register_kind, walk

Reduce = Literal["last", "max", "mean"]
REDUCES: tuple[str, ...] = ("last", "max", "mean")

FIRED = "fired"
"""The memory key holding the ``(batch,)`` bool decision once it is made."""
SCORE = "score"
"""The memory key holding the ``(batch,)`` aggregated score (NaN for a row with nothing to read)."""
_PARTIAL = "partial"

_SITE_ORDER = {Site.RESID_PRE: 0, Site.HEAD_OUT: 1, Site.ATTN_OUT: 2, Site.MLP_OUT: 3, Site.RESID_POST: 4}


def forward_order(point: HookPoint) -> tuple[int, int]:
    """Where ``point`` comes in one forward pass: points with a larger key run later."""
    return (point.layer, _SITE_ORDER[point.site])


@dataclass
class GateReport:
    """What a gate decided: the latest batch's rows and running counts (one decision per row and sequence)."""

    last_fired: Tensor | None = None
    last_scores: Tensor | None = None
    n_decided: int = 0
    n_fired: int = 0


@dataclass(frozen=True, eq=False)
class Gate:
    """Apply ``steer`` to the rows whose prompt's ``condition`` score at ``point`` is above ``threshold``, for their whole answer.

    Args:
        condition: a registered condition (:class:`~.conditions.Projection`, :class:`~.conditions.Cosine`,
            :class:`~.conditions.Probe`, :class:`refusal_steer.sae.SaeLatent`).
        point: where the condition is read (one hook point).
        threshold: a row fires when its aggregated score is strictly above it (finite; a cosine's in [-1, 1]).
        steer: the wrapped interventions (any kinds, gates included), each acting at its own points.
        reduce: ``"last"`` (the last prompt token, default), ``"max"`` or ``"mean"`` over the read set.
        skip_tokens: leave each prompt's first tokens out of the read set (e.g. the chat template's system prompt).
        invert: fire on the rows the gate would otherwise leave alone (score at or below the threshold).

    Example:
        >>> harden = Gate(Projection(harmful), "resid_pre.8", threshold=2.0, steer=[Add(refusal, "resid_pre.12", coef=4)])  # doctest: +SKIP
        >>> completions = generate(lm, prompts, [harden])  # doctest: +SKIP
        >>> harden.last_fired  # which rows of the last batch were steered  # doctest: +SKIP
    """

    kind: ClassVar[str] = "gate"
    positions: ClassVar[str] = "all"
    """The gate itself steers nothing; what its steer touches is clipped to each fired row's answer (module docstring)."""

    condition: Any
    point: HookPoint
    threshold: float
    steer: tuple[Intervention, ...]
    reduce: Reduce = "last"
    skip_tokens: int = 0
    invert: bool = False
    _points: tuple[HookPoint, ...] = field(default=(), init=False, repr=False)
    _always_call: tuple[bool, ...] = field(default=(), init=False, repr=False)
    _report: GateReport = field(default_factory=GateReport, init=False, repr=False)

    def __post_init__(self) -> None:
        if not callable(getattr(self.condition, "score", None)):
            raise ConfigError(f"gate.condition must be a condition, got {type(self.condition).__name__}",
                              fix=f"use one of {', '.join(sorted(conditions()))} (e.g. Cosine(direction))")
        object.__setattr__(self, "point", check_scalar(self.kind, "point", "point", self.point))
        threshold = check_scalar(self.kind, "threshold", "float", self.threshold)
        bounds = getattr(self.condition, "bounds", None)
        if bounds is not None and not bounds[0] <= threshold <= bounds[1]:
            raise ConfigError(f"gate.threshold is a {self.condition.kind} score and must lie in [{bounds[0]:g}, {bounds[1]:g}], got {threshold}",
                              fix=f"give a threshold in [{bounds[0]:g}, {bounds[1]:g}]")
        object.__setattr__(self, "threshold", threshold)
        reduce = check_scalar(self.kind, "reduce", "str", self.reduce)
        if reduce not in REDUCES:
            raise ConfigError(f"gate.reduce must be one of {', '.join(REDUCES)}, got {reduce!r}",
                              fix="write reduce: last (the last prompt token), max or mean (over the prompt after skip_tokens)")
        object.__setattr__(self, "reduce", reduce)
        skip = check_scalar(self.kind, "skip_tokens", "int", self.skip_tokens)
        if skip < 0:
            raise ConfigError(f"gate.skip_tokens must be >= 0, got {skip}", fix="give skip_tokens 0 (read the whole prompt) or more")
        object.__setattr__(self, "skip_tokens", skip)
        object.__setattr__(self, "invert", check_scalar(self.kind, "invert", "bool", self.invert))
        children = tuple(self.steer) if isinstance(self.steer, Sequence) and not isinstance(self.steer, str) else ()
        if not children:
            raise ConfigError("gate.steer is empty", fix="give the interventions the gate applies, e.g. steer=[Add(v, 'resid_pre.12')]")
        bad = [type(c).__name__ for c in children if not hasattr(c, "points") or not callable(c)]
        if bad:
            raise ConfigError(f"gate.steer holds {', '.join(bad)}, which are not interventions", fix="wrap interventions (Ablate, Add, ...)")
        object.__setattr__(self, "steer", children)
        points = [self.point, *[p for child in children for p in child.points]]
        object.__setattr__(self, "_points", tuple(dict.fromkeys(points)))
        # A child holding a gate keeps state of its own (its decision), so it runs even when no row of ours fired.
        object.__setattr__(self, "_always_call", tuple(any(isinstance(i, Gate) for i in walk([c])) for c in children))

    # ------------------------------------------------------------------------------------------ protocol

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return self._points

    def validate(self, lm: LoadedModel) -> None:
        self.condition.validate(lm, self.point)
        validate_interventions(lm, self.steer)

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        if call.point == self.point:
            self._read(x, call)
        window = self._window(x, call)
        out = x
        for j, child in enumerate(self.steer):
            if call.point not in child.points or (window is None and not self._always_call[j]):
                continue
            new = child(out, HookCall(point=call.point, positions=call.positions, memory=call.memory.setdefault(("child", j), {})))
            if window is not None:
                out = torch.where(window, new, out)
        return out

    # ------------------------------------------------------------------------------------------ reporting

    @property
    def last_fired(self) -> Tensor | None:
        """``(batch,)`` bool on the CPU: which rows of the latest decided batch fired (rows in that batch's order), or None."""
        return self._report.last_fired

    @property
    def last_scores(self) -> Tensor | None:
        """``(batch,)`` float32: the aggregated scores behind :attr:`last_fired` (NaN: nothing to read)."""
        return self._report.last_scores

    @property
    def counts(self) -> tuple[int, int]:
        """``(fired, decided)`` rows since construction or :meth:`reset_counts`."""
        return self._report.n_fired, self._report.n_decided

    @property
    def firing_rate(self) -> float:
        """Share of decided rows that fired (NaN before any decision)."""
        fired, decided = self.counts
        return fired / decided if decided else math.nan

    def clear_last(self) -> None:
        """Forget the latest decision but keep the counts (before a batch whose decision is read alone)."""
        self._report.last_fired = self._report.last_scores = None

    def reset_counts(self) -> None:
        """Forget the counts and the latest decision (e.g. before evaluating another prompt set)."""
        self.clear_last()
        self._report.n_decided = self._report.n_fired = 0

    # ------------------------------------------------------------------------------------------ internals

    def _read(self, x: Tensor, call: HookCall) -> None:
        """Add this call's prompt tokens to each row's aggregate; decide the rows whose prompt ends in this call."""
        positions, memory = call.positions, call.memory
        prompt = positions.prompt
        if prompt.shape != x.shape[:2] or not bool(prompt.any()):
            return
        from_start, from_end = prompt_indices(positions)
        # Masks live on the input's device, x on its layer's (a model spread over devices): read on x's.
        read = (prompt & (from_start >= self.skip_tokens)).to(x.device)
        ends = (prompt & from_end.eq(-1)).to(x.device)
        prompt = prompt.to(x.device)
        batch = x.shape[0]
        # A call at offset 0 starts reading the prompt from its first token (a new sequence, or a re-run without the KV cache).
        previous = memory.get(_PARTIAL) if positions.offset > 0 else None
        if previous is not None and previous["n"].shape[0] not in (1, batch):
            previous = None
        n = read.sum(dim=1)
        if previous is not None:
            n = n + previous["n"]
        if self.reduce == "last":
            rows = ends & read
            has = rows.any(dim=1)
            value = torch.full((batch,), math.nan, device=x.device)
            if bool(has.any()):
                index = rows.float().argmax(dim=1)
                picked = self.condition.score(x[torch.arange(batch, device=x.device), index]).float()
                value = torch.where(has, picked, value)
            if previous is not None:
                value = torch.where(has, value, previous["value"].expand(batch))
            partial = {"n": n, "value": value}
        else:
            scores = self.condition.score(x).float() if bool(read.any()) else torch.zeros(prompt.shape, device=x.device)
            if self.reduce == "max":
                value = scores.masked_fill(~read, -math.inf).amax(dim=1)
                if previous is not None:
                    value = torch.maximum(value, previous["value"].expand(batch))
            else:
                value = scores.masked_fill(~read, 0.0).sum(dim=1)
                if previous is not None:
                    value = value + previous["value"].expand(batch)
            partial = {"n": n, "value": value}
        memory[_PARTIAL] = partial
        decided = ends.any(dim=1)
        if not bool(decided.any()):
            return
        score = partial["value"] / partial["n"].clamp_min(1) if self.reduce == "mean" else partial["value"]
        score = torch.where(partial["n"] > 0, score, torch.full_like(score, math.nan))
        fired = torch.isfinite(score) & ((score > self.threshold) ^ self.invert)
        before = memory.get(FIRED)
        first_time = before is None or before.shape[0] != batch
        if not first_time:
            fired = torch.where(decided, fired, before)
            score = torch.where(decided, score, memory[SCORE])
        else:
            fired = fired & decided
        memory[FIRED], memory[SCORE] = fired, score
        if first_time:  # a re-run of the same sequence without the KV cache decides again, but is not counted again
            self._report.last_fired = fired.detach().cpu()
            self._report.last_scores = score.detach().float().cpu()
            self._report.n_decided += int(decided.sum())
            self._report.n_fired += int(fired.sum())

    def _window(self, x: Tensor, call: HookCall) -> Tensor | None:
        """``(batch, seq, 1)`` bool: the tokens of this call the wrapped steer may change, or None when there are none."""
        fired = call.memory.get(FIRED)
        positions: Positions = call.positions
        if fired is None or fired.shape[0] != x.shape[0] or positions.prompt.shape != x.shape[:2] or not bool(fired.any()):
            return None
        tokens = positions.generated
        if forward_order(call.point) >= forward_order(self.point):
            _, from_end = prompt_indices(positions)
            tokens = tokens | (positions.prompt & from_end.eq(-1))
        window = tokens.to(x.device) & fired.to(x.device).unsqueeze(1)
        return window.unsqueeze(-1) if bool(window.any()) else None


def gate_decisions(memory: dict[Any, Any]) -> Tensor | None:
    """The ``(batch,)`` decision a gate recorded in its memory, or None before it decided."""
    return memory.get(FIRED)


def _upgrade(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The gate layout before conditions (``direction``, ``interventions``, ``above``) as the current one."""
    old = {"direction", "interventions", "above"} & set(entry)
    if not old:
        return None
    new = {k: v for k, v in entry.items() if k not in old}
    if "direction" in entry:
        new["condition"] = {"kind": "cosine", "direction": entry["direction"]}
    if "interventions" in entry:
        new["steer"] = entry["interventions"]
    if "above" in entry:
        if not isinstance(entry["above"], bool):
            raise ConfigError(f"gate.above must be true or false, got {entry['above']!r}", fix="write invert: true (fire below the threshold)")
        new["invert"] = not entry["above"]
    return new


register_kind(Gate, [
    FieldSpec("condition", "condition", doc="what is read: {kind: projection|cosine|probe|sae_latent, ...}"),
    FieldSpec("point", "scalar", "point", doc="where the condition is read"),
    FieldSpec("threshold", "scalar", "float", doc="fire when the aggregated score is above it"),
    FieldSpec("steer", "nested", doc="the interventions applied to the rows that fire"),
    FieldSpec("reduce", "scalar", "str", required=False, doc="last (default), max or mean over the prompt tokens read"),
    FieldSpec("skip_tokens", "scalar", "int", required=False, doc="leave each prompt's first tokens unread"),
    FieldSpec("invert", "scalar", "bool", required=False, doc="fire at or below the threshold instead"),
], doc="conditional steering: the nested steer acts on the answers of the prompts that meet a condition (CAST)", upgrade=_upgrade)


__all__ = ["FIRED", "Gate", "GateReport", "REDUCES", "Reduce", "forward_order", "gate_decisions"]
