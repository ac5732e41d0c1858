"""Pick one refusal direction among the difference-in-means candidates (Arditi et al. 2024, App. C).

For each candidate (position, layer) with raw direction r:

- *bypass score*: mean refusal log-odds on harmful validation prompts with r ablated at every
  residual write (lower = ablation removes more refusal);
- *induce score*: mean refusal log-odds on harmless validation prompts with r added at ``resid_pre``
  of its layer (higher = addition induces refusal);
- *KL*: mean KL(base || ablated) of the next-token distribution on harmless validation prompts
  (measured batch by batch and stopped once the partial sum proves KL >= the threshold: :class:`.scores.KlFilter`).

Candidates in the last ``1 - max_layer_fraction`` of layers, with ``KL >= kl_threshold`` or with
``induce <= induce_threshold`` are discarded; the lowest bypass score wins. We score the bypass of the
candidates in ascending order and compute KL and induce lazily, stopping at the first that passes the
filters: this selects exactly the candidate the full table would, for far fewer forward passes. With
``screen_top_k > 0`` only the candidates with the best first-order bypass estimates
(:mod:`.screening`) get an exact bypass score; ``screen_top_k=0`` scores every candidate exactly.

Activation addition then calibrates its coefficient on the harmless validation prompts
(:func:`calibrate_actadd`). Arditi et al. add the selected direction itself; when no coefficient of it
lifts harmless refusal above the target (on small models the direction that ablates best within the
KL budget is often a weak inducer), the next lowest-bypass candidates are calibrated in turn
(``actadd_candidates``) and the first that reaches the target is added instead (:func:`choose_actadd`).
Which direction each intervention uses is recorded, and ``actadd_candidates=0`` keeps the single one.
By default the direction is added at the prompt's tokens only (``actadd_positions``), which the
calibration's first-token score cannot tell from adding it everywhere but generation can: the answer
that follows stays fluent.

Finally the ``cap_candidates`` lowest-bypass candidates are scored under *capped* ablation
(:mod:`.cap`: the projection is lowered to the harmless level instead of to zero), with the same
KL filter; the choice is recorded under ``cap`` and is what ``cap:DIR`` applies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, RefusalSteerError
from ..hooks import HookPoint, Site
from ..interventions import Add, all_layers_ablation
from ..models import LoadedModel
from ..models.memory import recompute_mlp
from .cap import CapChoice, select_cap
from .diff_in_means import MeanDiffs
from .scores import KlFilter, last_token_logprobs, refusal_log_odds
from .screening import estimate_ablation_effects

logger = logging.getLogger(__name__)


ACTADD_POSITIONS = ("prompt", "all")
"""Where activation addition may add the direction (see :attr:`SelectionConfig.actadd_positions`)."""


@dataclass(frozen=True)
class SelectionConfig:
    """Options of direction selection; defaults follow Arditi et al. (2024, App. C)."""

    kl_threshold: float = 0.1
    """Discard candidates whose ablation moves harmless next-token distributions by this KL (nats) or more."""
    induce_threshold: float = 0.0
    """Discard candidates whose addition leaves the harmless refusal log-odds at or below this."""
    max_layer_fraction: float = 0.8
    """Only consider layers below this fraction of the depth (late layers just copy the output)."""
    screen_top_k: int = 16
    """Exactly score only the k candidates with the best first-order estimate; 0 scores all."""
    full_table: bool = False
    """Compute KL and induce for every exactly scored candidate instead of stopping at the winner."""
    relax_induce: bool = True
    """If no candidate passes all filters, pick the lowest bypass among those passing the KL filter
    (recorded as ``rule`` in the result); activation addition then relies on the calibrated coefficient."""
    actadd_coefs: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
    """Coefficients tried, smallest first, when calibrating activation addition (empty: skip)."""
    actadd_target: float = 0.0
    """A candidate is added only if its best coefficient lifts the mean harmless refusal log-odds above this
    (0 = refusal more likely than not); otherwise the next ``actadd_candidates`` are tried."""
    actadd_candidates: int = 4
    """If the selected direction's addition misses ``actadd_target``, calibrate up to this many more of the
    lowest-bypass candidates and add the first that reaches it (0: always add the selected direction, as
    Arditi et al. do). On the default model the direction that ablates best within the KL budget is a weak
    inducer, and the alternative that reaches the target is a late-layer one (docs/results.md)."""
    actadd_positions: str = "prompt"
    """Where activation addition adds the direction: ``"prompt"`` (the prompt's tokens only) or ``"all"``
    (every token, generated ones too, as Arditi et al. do). The first answer token, where refusal is decided
    and calibration measures it, sees only prompt positions, so calibration is the same for both; adding at
    generated tokens as well pushes every later step off-distribution, and on the default model it makes
    the strong late-layer candidates loop ("I'm sorry, I can not as I as I ...") where ``"prompt"`` gives
    the model's own fluent refusal (docs/results.md)."""
    cap_candidates: int = 8
    """Score this many of the lowest-bypass candidates under capped ablation and choose one for ``cap:DIR``
    (0: skip). Capping leaves harmless-level activations alone, so within the same KL budget it can use
    candidates whose full ablation costs too much KL (docs/results.md)."""
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.max_layer_fraction <= 1:
            raise ConfigError(f"max_layer_fraction={self.max_layer_fraction} must be in (0, 1]")
        if self.kl_threshold <= 0:
            raise ConfigError(f"kl_threshold={self.kl_threshold} must be positive")
        if self.screen_top_k < 0:
            raise ConfigError(f"screen_top_k={self.screen_top_k} must be >= 0 (0 scores every candidate)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if self.actadd_candidates < 0:
            raise ConfigError(f"actadd_candidates={self.actadd_candidates} must be >= 0")
        if self.actadd_positions not in ACTADD_POSITIONS:
            raise ConfigError(f"actadd_positions={self.actadd_positions!r} must be one of {', '.join(ACTADD_POSITIONS)}",
                              fix="use 'prompt' (add at prompt tokens) or 'all' (every token, Arditi et al.)")
        if self.cap_candidates < 0:
            raise ConfigError(f"cap_candidates={self.cap_candidates} must be >= 0 (0 skips capped ablation)")


@dataclass
class CandidateScore:
    """One row of the selection table; scores are None where not computed."""

    position: int
    layer: int
    estimated_bypass: float | None = None
    bypass: float | None = None
    induce: float | None = None
    kl: float | None = None
    kl_n: int | None = None
    """Harmless prompts the KL was measured on; fewer than ``n_kl_harmless`` when the filter stopped early
    because those already proved KL >= the threshold (``kl`` is then that lower bound)."""
    status: str = "not evaluated"


@dataclass
class Selection:
    """The outcome: the chosen candidate, the whole table and the baselines it was judged against."""

    position: int
    layer: int
    direction: torch.Tensor
    table: list[CandidateScore]
    baseline_harmful: float
    baseline_harmless: float
    refusal_token_ids: list[int]
    config: SelectionConfig
    n_val_harmful: int
    n_val_harmless: int
    n_kl_harmless: int | None = None
    """Harmless validation prompts the KL filter was measured on."""
    screen_rank_correlation: float | None = None
    rule: str = "arditi"
    actadd_coef: float = 1.0
    actadd_calibration: list[dict] = field(default_factory=list)
    actadd_position: int | None = None
    """Candidate added by activation addition; None: the selected one."""
    actadd_layer: int | None = None
    actadd_direction: torch.Tensor | None = None
    actadd_search: list[dict] = field(default_factory=list)
    cap: CapChoice | None = None
    """The capped-ablation choice (None when ``cap_candidates`` is 0)."""
    extra: dict = field(default_factory=dict)

    @property
    def point(self) -> HookPoint:
        return HookPoint(Site.RESID_PRE, self.layer)

    @property
    def actadd_point(self) -> HookPoint:
        return HookPoint(Site.RESID_PRE, self.layer if self.actadd_layer is None else self.actadd_layer)

    def chosen(self) -> CandidateScore:
        return next(row for row in self.table if row.status == "selected")

    def to_json(self) -> dict:
        return {
            "position": self.position,
            "layer": self.layer,
            "point": str(self.point),
            "chosen": asdict(self.chosen()),
            "baseline_refusal_score_harmful": self.baseline_harmful,
            "baseline_refusal_score_harmless": self.baseline_harmless,
            "refusal_token_ids": self.refusal_token_ids,
            "n_val_harmful": self.n_val_harmful,
            "n_val_harmless": self.n_val_harmless,
            "n_kl_harmless": self.n_kl_harmless,
            "screen_rank_correlation": self.screen_rank_correlation,
            "rule": self.rule,
            "actadd_coef": self.actadd_coef,
            "actadd_calibration": self.actadd_calibration,
            "actadd": {
                "point": str(self.actadd_point),
                "position": self.position if self.actadd_position is None else self.actadd_position,
                "layer": self.actadd_point.layer,
                "coef": self.actadd_coef,
                "positions": self.config.actadd_positions,
                "same_as_ablation": self.actadd_position is None,
            },
            "actadd_search": self.actadd_search,
            "cap": None if self.cap is None else self.cap.to_json(),
            "config": asdict(self.config),
            "table": [asdict(row) for row in self.table],
            **self.extra,
        }


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 3:
        return None
    ra = torch.tensor(a).argsort().argsort().float()
    rb = torch.tensor(b).argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom else None


def select_direction(
    lm: LoadedModel,
    diffs: MeanDiffs,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal_token_ids: Sequence[int],
    config: SelectionConfig = SelectionConfig(),
    *,
    harmless_kl: Sequence[str] | None = None,
    system: str | None = None,
    progress: bool = True,
) -> Selection:
    """Choose the refusal direction among ``diffs`` on validation prompts (disjoint from the fitting prompts).

    ``harmless_kl`` (default: ``harmless_val``) are the harmless validation prompts the KL filter is
    measured on: KL is a mean dominated by a few prompts, and 32 of them can misjudge it by 0.03 nats
    at the 0.1 threshold (docs/directions.md), so the pipeline passes a larger sample.
    """
    if not harmful_val or not harmless_val:
        raise ConfigError("selection needs harmful and harmless validation prompts", fix="use a larger dataset or --n-val")
    kl_prompts = list(harmless_kl) if harmless_kl else list(harmless_val)
    bs = config.batch_size
    base_harmful = last_token_logprobs(lm, harmful_val, batch_size=bs, system=system)
    base_harmless = last_token_logprobs(lm, harmless_val, batch_size=bs, system=system)
    base_kl = base_harmless if kl_prompts == list(harmless_val) else last_token_logprobs(lm, kl_prompts, batch_size=bs, system=system)
    baseline_harmful = refusal_log_odds(base_harmful, refusal_token_ids).mean().item()
    baseline_harmless = refusal_log_odds(base_harmless, refusal_token_ids).mean().item()

    max_layer = config.max_layer_fraction * diffs.n_layers
    table = [CandidateScore(position=pos, layer=layer) for pos in diffs.positions for layer in range(diffs.n_layers)]
    norms = diffs.diffs.norm(dim=-1)
    scale = norms.max().clamp_min(1e-12)
    for row in table:
        if row.layer >= max_layer:
            row.status = "filtered: layer"
        elif norms[diffs.positions.index(row.position), row.layer] <= 1e-6 * scale:
            # e.g. layer 0: the post-instruction tokens' embeddings are the same for every prompt.
            row.status = "filtered: zero"
    allowed = [row for row in table if row.status == "not evaluated"]

    if config.screen_top_k and config.screen_top_k < len(allowed):
        stacked = torch.stack([diffs.candidate(row.position, row.layer) for row in allowed])
        with recompute_mlp(lm):  # the backward pass recomputes the MLPs' activations instead of keeping them (same values)
            effects = estimate_ablation_effects(lm, harmful_val, refusal_token_ids, stacked, batch_size=max(1, bs // 2), system=system,
                                                progress=progress)
        for row, effect in zip(allowed, effects.tolist()):
            row.estimated_bypass = baseline_harmful + effect
        shortlist = sorted(allowed, key=lambda row: row.estimated_bypass)[: config.screen_top_k]
    else:
        shortlist = allowed

    def bypass(row: CandidateScore) -> float:
        ablation = all_layers_ablation(diffs.candidate(row.position, row.layer), lm)
        logprobs = last_token_logprobs(lm, harmful_val, [ablation], batch_size=bs, system=system)
        return refusal_log_odds(logprobs, refusal_token_ids).mean().item()

    for row in tqdm(shortlist, desc="bypass scores", unit="candidate", disable=not progress):
        row.bypass = bypass(row)

    kl_filter = KlFilter(lm, kl_prompts, base_kl, config.kl_threshold, early_exit=not config.full_table, batch_size=bs, system=system)

    def passes(row: CandidateScore) -> bool:
        direction = diffs.candidate(row.position, row.layer)
        check = kl_filter([all_layers_ablation(direction, lm)])
        row.kl, row.kl_n = check.kl, check.n_measured
        kl_fails = not kl_filter.passes(check)
        if kl_fails and not config.full_table:
            # The induce score cannot rescue a candidate that fails on KL: skip its forward passes.
            row.status = "filtered: kl"
            logger.info("candidate pos %d layer %d: bypass %.3f kl %.4f -> %s", row.position, row.layer, row.bypass, row.kl, row.status)
            return False
        added = last_token_logprobs(lm, harmless_val, [Add(direction, HookPoint(Site.RESID_PRE, row.layer))], batch_size=bs, system=system)
        row.induce = refusal_log_odds(added, refusal_token_ids).mean().item()
        if kl_fails:
            row.status = "filtered: kl"
        elif row.induce <= config.induce_threshold:
            row.status = "filtered: induce"
        else:
            row.status = "passed"
        logger.info("candidate pos %d layer %d: bypass %.3f induce %.3f kl %.4f -> %s",
                    row.position, row.layer, row.bypass, row.induce, row.kl, row.status)
        return row.status == "passed"

    chosen: CandidateScore | None = None
    rule = "arditi"
    pending = sorted((row for row in allowed if row not in shortlist), key=lambda row: row.estimated_bypass or 0.0)
    chunk = max(config.screen_top_k, 1)
    while True:
        for row in tqdm(sorted((r for r in shortlist if r.status == "not evaluated"), key=lambda r: r.bypass),
                        desc="filters (KL, induce)", unit="candidate", disable=not progress):
            if passes(row) and chosen is None:
                chosen = row
                if not config.full_table:
                    break
        if chosen is not None or not pending:
            break
        if config.relax_induce and any(r.status == "filtered: induce" for r in shortlist):
            break  # the relaxed rule below has candidates; do not score everything
        logger.warning("no candidate passed the filters; scoring the next %d candidates exactly", chunk)
        batch, pending = pending[:chunk], pending[chunk:]
        for row in tqdm(batch, desc="bypass scores (more)", unit="candidate", disable=not progress):
            row.bypass = bypass(row)
        shortlist = shortlist + batch
    if chosen is None and config.relax_induce:
        kl_ok = [row for row in shortlist if row.status == "filtered: induce"]
        if kl_ok:
            chosen = min(kl_ok, key=lambda row: row.bypass)
            rule = "relaxed-induce"
            logger.warning("no candidate induced refusal at coefficient 1 (induce > %s); chose the lowest bypass score "
                           "among candidates with KL < %s", config.induce_threshold, config.kl_threshold)
    if chosen is None:
        raise RefusalSteerError(
            "no candidate direction passed the KL and induce filters",
            fix="relax --kl-threshold / --induce-threshold, or use more training prompts",
        )
    chosen.status = "selected"
    scored = [row for row in shortlist if row.estimated_bypass is not None and row.bypass is not None]
    correlation = _spearman([r.estimated_bypass for r in scored], [r.bypass for r in scored]) if scored else None

    def calibrate(row: CandidateScore) -> tuple[float, list[dict]]:
        known = {1.0: row.induce} if row.induce is not None else None  # same forward pass as the induce filter's
        return calibrate_actadd(lm, diffs.candidate(row.position, row.layer), row.layer, harmless_val, refusal_token_ids, config,
                                system=system, known=known)

    others = sorted((r for r in shortlist if r is not chosen and r.bypass is not None), key=lambda r: r.bypass)
    added, coef, calibration, search = choose_actadd([chosen, *others[: config.actadd_candidates]], calibrate, config.actadd_target)
    separate = added is not chosen
    score = search[[(e["position"], e["layer"]) for e in search].index((added.position, added.layer))]["score"]
    if separate:
        logger.warning("adding the selected direction cannot lift harmless refusal log-odds above %.2f; activation addition uses "
                       "resid_pre.%d position %d x %.2f instead (log-odds %.3f)", config.actadd_target, added.layer, added.position,
                       coef, score)
    elif score is None or score <= config.actadd_target:
        logger.warning("no activation-addition coefficient reached log-odds %.2f; using the best one tried, %.2f (log-odds %s)",
                       config.actadd_target, coef, "n/a" if score is None else f"{score:.3f}")
    cap = None
    if config.cap_candidates:
        lowest = sorted((r for r in shortlist if r.bypass is not None), key=lambda r: r.bypass)[: config.cap_candidates]
        cap = select_cap(lm, diffs, [(r.position, r.layer) for r in lowest], harmful_val, kl_filter, refusal_token_ids,
                             batch_size=bs, system=system, progress=progress)
    return Selection(
        cap=cap,
        rule=rule,
        actadd_coef=coef,
        actadd_calibration=calibration,
        actadd_position=added.position if separate else None,
        actadd_layer=added.layer if separate else None,
        actadd_direction=diffs.candidate(added.position, added.layer).clone() if separate else None,
        actadd_search=search,
        position=chosen.position,
        layer=chosen.layer,
        direction=diffs.candidate(chosen.position, chosen.layer).clone(),
        table=table,
        baseline_harmful=baseline_harmful,
        baseline_harmless=baseline_harmless,
        refusal_token_ids=list(refusal_token_ids),
        config=config,
        n_val_harmful=len(harmful_val),
        n_val_harmless=len(harmless_val),
        n_kl_harmless=len(kl_prompts),
        screen_rank_correlation=correlation,
    )


def choose_actadd(
    ordered: Sequence[CandidateScore],
    calibrate: Callable[[CandidateScore], tuple[float, list[dict]]],
    target: float,
) -> tuple[CandidateScore, float, list[dict], list[dict]]:
    """The candidate to add: the first in ``ordered`` whose calibrated score exceeds ``target``, else the best one tried.

    ``ordered`` starts with the selected direction (so it is kept whenever it reaches the target, as in
    Arditi et al.), then the lowest-bypass alternatives. Returns the candidate, its coefficient, its
    calibration tries and the search record (one entry per candidate calibrated).
    """
    if not ordered:
        raise ValueError("choose_actadd needs at least one candidate")
    tried: list[tuple[CandidateScore, float, list[dict], float]] = []
    for row in ordered:
        coef, tries = calibrate(row)
        score = next((t["induce"] for t in tries if t["coef"] == coef), -math.inf)
        tried.append((row, coef, tries, score))
        if score > target:
            break
    search = [{"position": r.position, "layer": r.layer, "coef": c, "score": s if math.isfinite(s) else None, "tries": t}
              for r, c, t, s in tried]
    row, coef, tries, score = next((item for item in tried if item[3] > target), None) or max(tried, key=lambda item: item[3])
    return row, coef, tries, search


def calibrate_actadd(
    lm: LoadedModel,
    direction: torch.Tensor,
    layer: int,
    harmless_val: Sequence[str],
    refusal_token_ids: Sequence[int],
    config: SelectionConfig,
    *,
    system: str | None = None,
    known: dict[float, float] | None = None,
) -> tuple[float, list[dict]]:
    """The coefficient in ``config.actadd_coefs`` whose addition gives the highest mean harmless refusal log-odds.

    Arditi et al. add the raw difference-in-means (coefficient 1); on smaller models its norm can be
    too short to induce refusal, so we search upward on the validation prompts and report every try.
    Past some norm the addition pushes activations off-distribution and refusal log-odds fall again,
    so the search stops at the first coefficient that scores lower than the one before (the peak has
    been passed; larger ones only fall further) and returns the peak. The peak, not the smallest
    coefficient past ``config.actadd_target``: one that only just clears the target on a few validation
    prompts can induce markedly fewer generated refusals than the peak (docs/results.md); the target
    decides only whether another candidate is tried (:func:`choose_actadd`).
    """
    tries: list[dict] = []
    for coef in config.actadd_coefs:
        if known and coef in known:  # e.g. the induce score at coefficient 1, already computed by the filters
            score = known[coef]
        else:
            added = last_token_logprobs(lm, harmless_val, [Add(direction, HookPoint(Site.RESID_PRE, layer), coef=coef)],
                                        batch_size=config.batch_size, system=system)
            score = refusal_log_odds(added, refusal_token_ids).mean().item()
        tries.append({"coef": coef, "induce": score})
        logger.info("activation addition coef %.2f: harmless refusal log-odds %.3f", coef, score)
        if len(tries) >= 2 and score < tries[-2]["induce"]:
            break
    if not tries:
        return 1.0, tries
    best = max(tries, key=lambda t: t["induce"])
    logger.info("activation addition coefficient %.2f (harmless refusal log-odds %.3f, target %.2f)",
                best["coef"], best["induce"], config.actadd_target)
    return best["coef"], tries
