"""``refusal-steer run CONFIG.yaml``: the run's configuration, as the library's own dataclasses.

A run config declares stages; every field is a dataclass field with its doc, and a YAML key that is not a
field (a typo) is an error naming it and the fields that exist::

    model: default
    seed: 0
    direction:                       # refusal_steer.runs.direction.DirectionConfig (selection:, optimize: nested)
      harmful: advbench
      n_train: 128
    sae:                             # SAEs trained on the model's own token mix (SaeStage)
      - {point: resid_pre.14, arch: topk, width: 8192, k: 32, train: {tokens: 1000000, checkpoint_every: 500}}
    evaluate:                        # a matrix of steers x datasets x metrics (EvaluateConfig)
      steers:
        baseline: none
        ablation: "ablate:{run}/direction"     # {run} is the run folder
        refined: {steer: "ablate:{run}/direction/optimized.safetensors", optional: true}
      datasets:
        harmful: {name: advbench, split: test, limit: 100}
        harmless: {name: harmless, split: test, limit: 100}
      metrics:
        - {metric: refusal, datasets: [harmful, harmless]}
        - {metric: kl, datasets: [harmless], steers: [ablation, refined]}
    report: demo                     # write the demo's report.md/html from the results (or omit)

``configs/demo.yaml`` and ``configs/demo-quick.yaml`` are the demo (``refusal-steer demo`` runs the same
:class:`RunConfig`; a test checks the shipped files equal it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ConfigError, CorruptFileError
from ..sae.training import TrainConfig
from .direction import DirectionConfig

METRICS = ("refusal", "kl", "mmlu", "arc", "gsm8k")


@dataclass(frozen=True)
class SaeStage:
    """One SAE trained on a chat + harmful + harmless token mix cached from the run's model (``refusal-steer sae train --model``)."""

    point: str
    """Hook point, e.g. ``resid_pre.14``."""
    train: TrainConfig
    """How it trains (the library's :class:`~refusal_steer.sae.TrainConfig`: ``tokens`` is the budget; ``seed`` also draws the mix)."""
    cache_tokens: int | None = None
    """Tokens of the mix to cache (default: ``train.tokens``)."""
    arch: str = "topk"
    """Architecture: relu_l1, topk, batchtopk, jumprelu."""
    width: int = 8192
    """Number of latents."""
    k: int = 32
    """Active latents per token (topk, batchtopk)."""
    l1_coefficient: float = 5.0
    """relu_l1: L1 coefficient."""
    l0_coefficient: float = 1.0
    """jumprelu: L0 coefficient."""
    name: str | None = None
    """Folder under ``RUN/sae/`` (default: the point)."""

    @property
    def folder(self) -> str:
        return self.name or self.point


@dataclass(frozen=True)
class EvalDataset:
    """A prompt set of the evaluation matrix."""

    name: str
    """A dataset name (``refusal-steer data list``), a union (``a+b``) or ``jsonl:PATH``/``csv:PATH``."""
    split: str = "test"
    """Split: evaluation prompts never overlap the prompts a direction was fitted on (checked)."""
    limit: int | None = None
    """At most this many prompts (a deterministic sample)."""


@dataclass(frozen=True)
class EvalSteer:
    """A steer of the evaluation matrix: any ``--steer`` value (short form, steer file, ``none``)."""

    steer: str = "none"
    """``{run}`` is replaced by the run folder, so a steer can name what an earlier stage wrote."""
    optional: bool = False
    """Skip this steer (recorded as skipped) when the file it names does not exist."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric over some datasets of the matrix, under all steers or the ones named."""

    metric: str
    """refusal (generate + judge), kl (vs unsteered, next token), mmlu / arc (answer-letter likelihood), gsm8k."""
    datasets: tuple[str, ...]
    """Names of entries of ``datasets``."""
    steers: tuple[str, ...] | None = None
    """Names of entries of ``steers`` (None: every steer; KL skips the unsteered one)."""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric {self.metric!r} is unknown", fix=f"use one of {', '.join(METRICS)}")


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluation matrix: steers x datasets x metrics, each cell a resumable stage keyed by the steer's fingerprint."""

    steers: dict[str, EvalSteer]
    datasets: dict[str, EvalDataset]
    metrics: tuple[MetricSpec, ...] = (MetricSpec("refusal", ()),)
    judge: str = "substring"
    """Refusal judge (substring, classifier:DIR, llm:MODEL)."""
    max_new_tokens: int = 64
    """Tokens generated per answer (refusal, gsm8k)."""
    batch_size: int = 8
    """Prompts per scoring forward pass (KL, multiple choice)."""
    generation_batch_size: int = 32
    """Prompts generated together; the datasets of one steer are generated in one batch."""

    def __post_init__(self) -> None:
        for spec in self.metrics:
            unknown = [d for d in spec.datasets if d not in self.datasets] + [s for s in spec.steers or () if s not in self.steers]
            if unknown:
                raise ConfigError(f"evaluate.metrics ({spec.metric}) names {unknown}, which are not in evaluate.datasets/steers",
                                  fix=f"datasets: {sorted(self.datasets)}; steers: {sorted(self.steers)}")


@dataclass(frozen=True)
class RunConfig:
    """A whole run: the model, then optional stages in order (direction, SAEs, evaluation matrix, report)."""

    model: str = "default"
    """Model: ``default``, a local folder, a ``.gguf`` file or a hub id."""
    seed: int = 0
    """Seed of data samples and bootstrap intervals."""
    direction: DirectionConfig | None = None
    """Find, select and refine the refusal direction into ``RUN/direction``."""
    sae: tuple[SaeStage, ...] = ()
    """SAEs trained into ``RUN/sae/POINT``."""
    evaluate: EvaluateConfig | None = None
    """The evaluation matrix, written to ``RUN/results`` and ``RUN/completions``."""
    report: str | None = None
    """``demo``: write the demo's report from the results (needs the direction stage)."""
    label: dict[str, Any] = field(default_factory=dict)
    """Free-form values recorded in ``metrics.json["config"]`` (the demo records its own settings here)."""

    def __post_init__(self) -> None:
        if self.report not in (None, "demo"):
            raise ConfigError(f"report {self.report!r} is unknown", fix="use report: demo, or leave it out")
        if self.report == "demo" and (self.direction is None or self.evaluate is None):
            raise ConfigError("report: demo needs a direction stage and an evaluate stage")


# --------------------------------------------------------------------------------------------- YAML <-> dataclasses


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run config (YAML or JSON); unknown keys, wrong types and missing fields are errors naming the key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"run config {path} does not exist", fix="pass a YAML file, e.g. configs/demo-quick.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CorruptFileError(f"cannot parse {path}: {exc}", fix="write valid YAML (see configs/demo.yaml)") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of run fields", fix="see configs/demo.yaml")
    return from_mapping(RunConfig, data, where=str(path))


def from_mapping(cls: type, data: Any, *, where: str) -> Any:
    """Build dataclass ``cls`` from plain data, recursively; every problem names the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}", fix=f"{cls.__name__} takes {', '.join(fields)}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}", fix=f"{cls.__name__} needs {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", fix=exc.fix) from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, where)
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(f"{where}: {value!r} fits none of the allowed types ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        if tp is EvalSteer and isinstance(value, str):
            return EvalSteer(steer=value)
        return from_mapping(tp, value, where=where)
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1] if args else Any, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def to_mapping(obj: Any) -> Any:
    """Plain data (for YAML) from a config dataclass; the inverse of :func:`from_mapping`."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


def dump_run_config(config: RunConfig) -> str:
    """The YAML text of ``config`` (what ``configs/*.yaml`` hold)."""
    return yaml.safe_dump(to_mapping(config), sort_keys=False)
