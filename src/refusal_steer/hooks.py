"""Hook points and the engine that installs interventions on a model and always removes them.

A hook point is a typed value, ``HookPoint(Site.RESID_PRE, layer=12)``; the CLI string ``resid_pre.12``
is parsed into one at the edge. Sites:

- ``resid_pre.L``: the residual stream entering block L.
- ``resid_post.L``: the residual stream leaving block L.
- ``attn_out.L``: the attention branch's write into the residual stream (after the output projection;
  after the post-attention norm for Gemma 2/3).
- ``mlp_out.L``: the MLP branch's write into the residual stream.
- ``head_out.L.H``: head H's output *before* the output projection, shape ``(batch, seq, head_dim)``.

An intervention is any object with ``points`` (the hook points it acts on), ``validate(lm)`` (raise
before any forward pass if it cannot fit the model) and ``__call__(x, call) -> x``. ``call`` tells
which point fired and which positions of ``x`` are prompt, generated or padding, so position-selective
steering works the same in a plain forward, in batched left-padded generation and with a KV cache.
"""

from __future__ import annotations

import enum
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .errors import HookPointError
from .models.loaded import LoadedModel


class Site(str, enum.Enum):
    """Where in a block a hook reads or writes."""

    RESID_PRE = "resid_pre"
    RESID_POST = "resid_post"
    ATTN_OUT = "attn_out"
    MLP_OUT = "mlp_out"
    HEAD_OUT = "head_out"


_POINT_RE = re.compile(r"^(?P<site>[a-z_]+)\.(?P<layer>-?\d+)(?:\.(?P<head>\d+))?$")


@dataclass(frozen=True, order=True)
class HookPoint:
    """One place in the model: a site, a layer and (for ``head_out``) a head."""

    site: Site
    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.site, Site):
            object.__setattr__(self, "site", Site(self.site))
        if (self.site is Site.HEAD_OUT) != (self.head is not None):
            raise HookPointError(
                f"{self.site.value} {'needs' if self.site is Site.HEAD_OUT else 'takes no'} head index",
                fix="write head_out.LAYER.HEAD, or SITE.LAYER for the other sites",
            )

    @classmethod
    def parse(cls, text: str | HookPoint) -> HookPoint:
        """Parse ``resid_pre.12`` / ``head_out.12.3`` into a hook point."""
        if isinstance(text, HookPoint):
            return text
        match = _POINT_RE.match(text.strip())
        sites = ", ".join(s.value for s in Site)
        if not match:
            raise HookPointError(f"cannot parse hook point {text!r}", fix=f"write SITE.LAYER (sites: {sites}), e.g. resid_pre.12 or head_out.12.3")
        try:
            site = Site(match["site"])
        except ValueError:
            raise HookPointError(f"unknown site {match['site']!r} in {text!r}", fix=f"use one of {sites}") from None
        head = int(match["head"]) if match["head"] is not None else None
        return cls(site=site, layer=int(match["layer"]), head=head)

    def __str__(self) -> str:
        base = f"{self.site.value}.{self.layer}"
        return base if self.head is None else f"{base}.{self.head}"

    def width(self, lm: LoadedModel) -> int:
        """The last dimension of the activation at this point."""
        return lm.head_dim if self.site is Site.HEAD_OUT else lm.d_model

    def validate(self, lm: LoadedModel) -> None:
        """Raise :class:`HookPointError` if the layer or head does not exist in ``lm``."""
        if not 0 <= self.layer < lm.n_layers:
            raise HookPointError(f"layer {self.layer} in {self} is out of range", fix=f"this model has layers 0..{lm.n_layers - 1}")
        if self.head is not None and not 0 <= self.head < lm.n_heads:
            raise HookPointError(f"head {self.head} in {self} is out of range", fix=f"this model has heads 0..{lm.n_heads - 1}")


def residual_writes(lm: LoadedModel, layers: Iterable[int] | None = None) -> tuple[HookPoint, ...]:
    """Every point where the residual stream is written: ``resid_pre``, ``attn_out``, ``mlp_out`` of each layer.

    Ablating at ``resid_pre`` of every layer plus every branch output removes a direction from the
    whole residual stream, including the final one read by the unembedding (Arditi et al. 2024, §2.4).
    """
    chosen: Sequence[int] = range(lm.n_layers) if layers is None else list(layers)
    return tuple(HookPoint(site, layer) for layer in chosen for site in (Site.RESID_PRE, Site.ATTN_OUT, Site.MLP_OUT))


def parse_points(text: str | Iterable[str | HookPoint]) -> list[HookPoint]:
    """Parse a comma-separated string (or a list) of hook points; ``resid_pre.*`` is not expanded here."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [HookPoint.parse(item) for item in items if str(item).strip()]


@dataclass(frozen=True)
class Positions:
    """Boolean masks ``(batch, seq)`` over the tokens of the current forward call.

    ``offset`` is how many positions were already in the KV cache before this call, so absolute
    position ``offset + t`` is the t-th token of this call. ``prompt_before`` ``(batch,)`` counts each
    row's prompt tokens among those cached positions (a shared prefix computed in an earlier call), so
    explicit prompt indices count from the true start of the prompt; None means none.
    """

    prompt: Tensor
    generated: Tensor
    padding: Tensor
    offset: int
    prompt_before: Tensor | None = None
    prompt_after: int = 0
    """Prompt tokens every row still has after this call (a shared prefix's call sets it), so indices
    counted from the end of the prompt never land in the prefix."""

    @classmethod
    def all_prompt(cls, batch: int, seq: int, device: torch.device) -> Positions:
        """Masks for a plain forward pass without padding information: every token is prompt."""
        ones = torch.ones(batch, seq, dtype=torch.bool, device=device)
        return cls(prompt=ones, generated=~ones, padding=~ones, offset=0)


@dataclass(frozen=True)
class HookCall:
    """What an intervention is told when its hook fires: the point, the position masks and its memory.

    ``memory`` is a dict private to the intervention that lives for one sequence: it is emptied when a
    forward call starts a new sequence (nothing in the KV cache yet and no generated token in the call),
    so what a steer stores while the prompt is computed (a gate's per-row decision) holds for every
    decoding step of that answer, also when generation runs without the KV cache (each step then re-runs
    the prompt and the tokens generated so far from position 0), and never leaks into the next batch or
    the next ``generate`` call.
    """

    point: HookPoint
    positions: Positions
    memory: dict = field(default_factory=dict)


@runtime_checkable
class Intervention(Protocol):
    """The contract every intervention meets (ablate, add, cap, gate, SAE splice, recorders...).

    ``kind`` names it (the registered kind of :mod:`refusal_steer.interventions.registry` for the ones that
    can be saved); ``positions`` is its position selector (``"all"``, ``"prompt"``, ``"generated"`` or
    prompt indices), which batching reads to decide whether a shared prefix may be computed once.
    """

    kind: str

    @property
    def positions(self) -> Any: ...

    @property
    def points(self) -> tuple[HookPoint, ...]: ...

    def validate(self, lm: LoadedModel) -> None: ...

    def __call__(self, x: Tensor, call: HookCall) -> Tensor: ...


@dataclass
class _HookState:
    """Per-model state shared by the hooks of all installed interventions."""

    prompt_length: int | None = None
    prompt_after: int = 0
    positions: Positions | None = None
    installs: int = 0
    interventions: list[Any] = field(default_factory=list)
    memory: dict[int, dict] = field(default_factory=dict)
    """Per-intervention memory (keyed by ``id``) for the current sequence; see :class:`HookCall`."""


def _state(lm: LoadedModel) -> _HookState:
    if lm._hook_state is None:
        lm._hook_state = _HookState()
    return lm._hook_state


@dataclass
class HookHandle:
    """Everything :func:`install` registered; ``remove()`` undoes it and is safe to call twice."""

    lm: LoadedModel
    handles: list[RemovableHandle] = field(default_factory=list)
    interventions: list[Any] = field(default_factory=list)
    removed: bool = False

    def remove(self) -> None:
        if self.removed:
            return
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.removed = True
        state = _state(self.lm)
        for intervention in self.interventions:
            for i, installed in enumerate(state.interventions):
                if installed is intervention:
                    del state.interventions[i]
                    break
        state.installs -= 1
        for intervention in self.interventions:
            state.memory.pop(id(intervention), None)
        if state.installs <= 0:
            state.positions = None
            state.memory.clear()


def _compute_positions(state: _HookState, args: tuple, kwargs: dict) -> Positions | None:
    tokens = kwargs.get("input_ids")
    if tokens is None and args:
        tokens = args[0]
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if not isinstance(tokens, Tensor) or tokens.dim() < 2:
        return None
    batch, seq = tokens.shape[0], tokens.shape[1]
    device = tokens.device
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[1] >= seq:
        offset = mask.shape[1] - seq
        padding = mask[:, offset:].eq(0)
    else:
        offset = 0
        cache_position = kwargs.get("cache_position")
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.24 names it cache
        if isinstance(cache_position, Tensor) and cache_position.numel():
            offset = int(cache_position.reshape(-1)[0])
        elif past is not None and hasattr(past, "get_seq_length"):
            offset = int(past.get_seq_length())
        padding = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    absolute = torch.arange(offset, offset + seq, device=device).unsqueeze(0)
    prompt_length = state.prompt_length if state.prompt_length is not None else (offset + seq if offset == 0 else 0)
    in_prompt = absolute < prompt_length
    prompt_before = None
    if offset and prompt_length and isinstance(mask, Tensor) and mask.dim() == 2:
        prompt_before = mask[:, : min(offset, prompt_length)].ne(0).sum(dim=1)
    return Positions(prompt=in_prompt & ~padding, generated=~in_prompt & ~padding, padding=padding, offset=offset,
                     prompt_before=prompt_before, prompt_after=state.prompt_after)


def _positions_for(state: _HookState, x: Tensor) -> Positions:
    positions = state.positions
    if positions is not None and positions.prompt.shape == x.shape[:2]:
        return positions
    return Positions.all_prompt(x.shape[0], x.shape[1], x.device)


def _replace_first(output: Any, new: Tensor) -> Any:
    if isinstance(output, Tensor):
        return new
    return (new, *output[1:])


def _first(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def _call(state: _HookState, intervention: Any, point: HookPoint, positions: Positions) -> HookCall:
    return HookCall(point=point, positions=positions, memory=state.memory.setdefault(id(intervention), {}))


def _run_chain(chain: Sequence[tuple[Intervention, HookPoint]], x: Tensor, state: _HookState) -> Tensor:
    positions = _positions_for(state, x)
    for intervention, point in chain:
        x = intervention(x, _call(state, intervention, point, positions))
    return x


def validate_interventions(lm: LoadedModel, interventions: Sequence[Intervention]) -> None:
    """Check every point and width against ``lm`` before any forward pass (what :func:`install` does first)."""
    for intervention in interventions:
        for point in intervention.points:
            point.validate(lm)
        intervention.validate(lm)


def install(lm: LoadedModel, interventions: Sequence[Intervention]) -> HookHandle:
    """Validate and register ``interventions`` on ``lm``; return a handle whose ``remove()`` undoes it.

    Interventions at the same point run in list order. Validation happens before anything is
    registered, so a bad intervention leaves the model untouched.
    """
    validate_interventions(lm, interventions)
    state = _state(lm)
    handle = HookHandle(lm=lm, interventions=list(interventions))
    state.installs += 1
    state.interventions.extend(interventions)
    try:
        _register_all(lm, interventions, state, handle)
    except BaseException:
        handle.remove()
        raise
    return handle


def _register_all(lm: LoadedModel, interventions: Sequence[Intervention], state: _HookState, handle: HookHandle) -> None:
    def root_pre_hook(_module: Any, args: tuple, kwargs: dict) -> None:
        state.positions = _compute_positions(state, args, kwargs)
        positions = state.positions
        # A new sequence (not a decoding step, nor a step re-run from 0 without the KV cache): steers forget what they kept.
        if positions is None or (positions.offset == 0 and not bool(positions.generated.any())):
            state.memory.clear()

    def root_post_hook(_module: Any, _args: Any, _output: Any) -> None:
        state.positions = None

    handle.handles.append(lm.model.register_forward_pre_hook(root_pre_hook, with_kwargs=True))
    handle.handles.append(lm.model.register_forward_hook(root_post_hook))

    chains: dict[tuple[Site, int], list[tuple[Intervention, HookPoint]]] = defaultdict(list)
    for intervention in interventions:
        for point in intervention.points:
            chains[(point.site, point.layer)].append((intervention, point))

    adapter = lm.adapter
    for (site, layer), chain in chains.items():
        block = lm.layers[layer]
        if site is Site.RESID_PRE:
            handle.handles.append(block.register_forward_pre_hook(_resid_pre_hook(chain, state), with_kwargs=True))
        elif site is Site.RESID_POST:
            handle.handles.append(block.register_forward_hook(_output_hook(chain, state)))
        elif site is Site.ATTN_OUT:
            handle.handles.append(lm.block_module(layer, adapter.attn_write).register_forward_hook(_output_hook(chain, state)))
        elif site is Site.MLP_OUT:
            handle.handles.append(lm.block_module(layer, adapter.mlp_write).register_forward_hook(_output_hook(chain, state)))
        elif site is Site.HEAD_OUT:
            o_proj = lm.block_module(layer, adapter.attn_o_proj)
            handle.handles.append(o_proj.register_forward_pre_hook(_head_hook(chain, state, lm.n_heads, lm.head_dim)))


def _resid_pre_hook(chain: list[tuple[Intervention, HookPoint]], state: _HookState):
    def hook(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            new = _run_chain(chain, args[0], state)
            return (new, *args[1:]), kwargs
        new = _run_chain(chain, kwargs["hidden_states"], state)
        return args, {**kwargs, "hidden_states": new}

    return hook


def _output_hook(chain: list[tuple[Intervention, HookPoint]], state: _HookState):
    def hook(_module: Any, _args: Any, output: Any) -> Any:
        x = _first(output)
        new = _run_chain(chain, x, state)
        return output if new is x else _replace_first(output, new)

    return hook


def _head_hook(chain: list[tuple[Intervention, HookPoint]], state: _HookState, n_heads: int, head_dim: int):
    def hook(_module: Any, args: tuple) -> tuple | None:
        x = args[0]
        heads = x.view(*x.shape[:-1], n_heads, head_dim)
        positions = _positions_for(state, x)
        out = heads
        for intervention, point in chain:
            sub = out[..., point.head, :]
            new = intervention(sub, _call(state, intervention, point, positions))
            if new is not sub:
                if out is heads:
                    out = heads.clone()
                out[..., point.head, :] = new
        if out is heads:
            return None
        return (out.reshape(x.shape), *args[1:])

    return hook


@contextmanager
def apply(lm: LoadedModel, interventions: Sequence[Intervention]) -> Iterator[HookHandle]:
    """Install ``interventions`` for the duration of a ``with`` block; they are removed even on error.

    Example:
        >>> with apply(lm, [Ablate(direction, points=all_residual_writes(lm))]):  # doctest: +SKIP
        ...     logits = lm.model(**batch).logits
    """
    handle = install(lm, interventions)
    try:
        yield handle
    finally:
        handle.remove()


@contextmanager
def prompt_boundary(lm: LoadedModel, prompt_length: int | None) -> Iterator[None]:
    """Tell the hooks that absolute positions ``< prompt_length`` are prompt and the rest generated.

    Generation sets this to the (left-padded) prompt length so hooks can tell prompt from generated
    tokens even when the KV cache is off and every step re-runs the whole sequence.
    """
    state = _state(lm)
    previous = state.prompt_length
    state.prompt_length = prompt_length
    try:
        yield
    finally:
        state.prompt_length = previous


@contextmanager
def prompt_continues(lm: LoadedModel, n_tokens: int) -> Iterator[None]:
    """Tell the hooks that every row's prompt has at least ``n_tokens`` more tokens after this call
    (used while a shared prefix is computed on its own)."""
    state = _state(lm)
    previous = state.prompt_after
    state.prompt_after = n_tokens
    try:
        yield
    finally:
        state.prompt_after = previous


def installed_interventions(lm: LoadedModel) -> list[Any]:
    """The interventions installed on ``lm`` right now, in installation order."""
    return list(_state(lm).interventions)


class StopForward(Exception):
    """Raised by a recorder to end a forward pass once the last needed layer has run."""


@dataclass
class Recorder:
    """Records the activation at each point (a read-only intervention: it returns ``x`` unchanged).

    Args:
        points: where to read.
        stop_after_last: raise :class:`StopForward` after the deepest point fired, so layers past
            it are never computed (use :func:`run_and_record`, which catches it).
    """

    record_points: tuple[HookPoint, ...]
    stop_after_last: bool = False
    store: dict[HookPoint, list[Tensor]] = field(default_factory=lambda: defaultdict(list))
    kind = "record"
    positions = "all"

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return self.record_points

    def validate(self, lm: LoadedModel) -> None:
        if not self.record_points:
            raise HookPointError("no hook points to record", fix="pass at least one point, e.g. resid_pre.12")

    @property
    def deepest(self) -> HookPoint:
        """The point the forward pass reaches last (where ``stop_after_last`` stops it)."""
        order = {Site.RESID_PRE: 0, Site.HEAD_OUT: 1, Site.ATTN_OUT: 2, Site.MLP_OUT: 3, Site.RESID_POST: 4}
        return max(self.record_points, key=lambda p: (p.layer, order[p.site], p.head or 0))

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        self.store[call.point].append(x.detach())
        if self.stop_after_last and call.point == self.deepest and all(p in self.store for p in self.record_points):
            raise StopForward
        return x

    def __getitem__(self, point: HookPoint | str) -> Tensor:
        """The recorded activations at ``point``, concatenated over calls along the sequence axis."""
        tensors = self.store[HookPoint.parse(point)]
        if not tensors:
            raise KeyError(f"nothing recorded at {point}")
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)


@contextmanager
def record(lm: LoadedModel, points: Iterable[HookPoint | str]) -> Iterator[Recorder]:
    """Record activations at ``points`` during the ``with`` block.

    Example:
        >>> with record(lm, ["resid_pre.12"]) as rec:  # doctest: +SKIP
        ...     lm.model(**batch)
        >>> rec["resid_pre.12"].shape  # (batch, seq, d_model)  # doctest: +SKIP
    """
    recorder = Recorder(tuple(HookPoint.parse(p) for p in points))
    with apply(lm, [recorder]):
        yield recorder


def run_and_record(
    lm: LoadedModel, inputs: dict[str, Tensor], points: Iterable[HookPoint | str], extra: Sequence[Intervention] = ()
) -> dict[HookPoint, Tensor]:
    """Run one forward pass that stops after the deepest point in ``points``; return the activations.

    ``extra`` interventions (e.g. a steer) are installed before the recorder, so it sees their effect.
    """
    recorder = Recorder(tuple(HookPoint.parse(p) for p in points), stop_after_last=True)
    with apply(lm, [*extra, recorder]), torch.no_grad():
        try:
            lm.model(**inputs, use_cache=False)
        except StopForward:
            pass
    return {point: recorder[point] for point in recorder.record_points}
