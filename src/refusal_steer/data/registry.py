"""Dataset registry (name -> :class:`DatasetSpec`) and :func:`load_dataset`, the one way to get data.

Pinned sources register themselves in :mod:`refusal_steer.data.sources`; user files are addressed
as ``jsonl:PATH`` or ``csv:PATH``. Loading goes: spec -> cached or freshly parsed records ->
optional content-hash split -> optional seeded subsample.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetNotFoundError, EmptyDatasetError
from .cache import cache_path, cached_count, read_cache, write_cache
from .records import RECORD_KINDS, Dataset, DatasetInfo, Record, record_text
from .splits import DEFAULT_FRACTIONS, check_fractions, split_dataset
from .text import normalize_text
from .user_files import USER_SCHEMES, load_user_file

logger = logging.getLogger(__name__)

Loader = Callable[..., Sequence[Record]]


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset: its metadata plus a ``loader(**opts)`` returning its records."""

    name: str
    kind: str
    license: str
    source: str
    description: str
    loader: Loader
    #: Bumped when the source pin or the parser changes, so stale caches are not reused.
    version: str = "1"

    def __post_init__(self) -> None:
        if self.kind not in RECORD_KINDS:
            raise ConfigError(f"DatasetSpec.kind {self.kind!r} is unknown", fix=f"use one of {sorted(RECORD_KINDS)}")
        if not self.name or ":" in self.name:
            raise ConfigError(
                f"DatasetSpec.name {self.name!r} is empty or has a ':'", fix="use a name like 'my-prompts'"
            )

    def info(self, n: int | None = None) -> DatasetInfo:
        """This spec's :class:`DatasetInfo` with record count ``n`` (None when not counted)."""
        return DatasetInfo(self.name, self.kind, n, self.license, self.source, self.description)

    def options(self) -> list[str]:
        """Names of the keyword options the loader accepts."""
        params = inspect.signature(self.loader).parameters.values()
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a spec to the registry; registering a name twice raises :class:`ConfigError`."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"dataset {spec.name!r} is already registered", fix="pick another name")
    _REGISTRY[spec.name] = spec
    return spec


def dataset(
    name: str, *, kind: str, license: str, source: str, description: str, version: str = "1"
) -> Callable[[Loader], Loader]:
    """Decorator that registers a loader function under ``name`` with its metadata.

    Example:
        >>> @dataset("my-prompts", kind="instruction", license="CC0", source="inline", description="two prompts")
        ... def _mine() -> list[Instruction]:  # doctest: +SKIP
        ...     return [Instruction("p0", "Say hi"), Instruction("p1", "Name a colour")]
    """

    def decorate(loader: Loader) -> Loader:
        register_dataset(DatasetSpec(name, kind, license, source, description, loader, version))
        return loader

    return decorate


def _ensure_sources() -> None:
    from . import sources  # noqa: F401  (registers the pinned datasets on import)


def get_spec(name: str) -> DatasetSpec:
    """The registered spec called ``name``; unknown names raise with close matches and the fix."""
    _ensure_sources()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    fix = None
    if Path(name).suffix.lower() in (".jsonl", ".csv") or Path(name).is_file():
        scheme = "csv" if name.lower().endswith(".csv") else "jsonl"
        fix = f"to load your own file, write {scheme}:{name}"
    raise DatasetNotFoundError(f"unknown dataset {name!r}{hint}", fix=fix)


def dataset_names() -> list[str]:
    """Names of every registered dataset, in registration order."""
    _ensure_sources()
    return list(_REGISTRY)


def _check_opts(spec: DatasetSpec, opts: Mapping[str, Any]) -> None:
    accepted = spec.options()
    unknown = [k for k in opts if k not in accepted]
    if unknown:
        raise ConfigError(
            f"dataset {spec.name!r} has no option {unknown[0]!r}",
            fix=f"its options are: {', '.join(accepted)}" if accepted else "it takes no options",
        )


def _load_records(spec: DatasetSpec, opts: Mapping[str, Any], use_cache: bool) -> list[Record]:
    path = cache_path(spec.name, spec.version, opts)
    if use_cache and (cached := read_cache(path, spec.kind)) is not None:
        return cached
    logger.info("parsing dataset %s from its pinned source", spec.name)
    records = list(spec.loader(**opts))
    if use_cache:
        write_cache(path, spec.kind, records)
    return records


def _subsample(ds: Dataset, limit: int, seed: int) -> Dataset:
    """The first ``limit`` of a seeded permutation, kept in dataset order (so smaller limits nest)."""
    if limit >= len(ds):
        return ds
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    return ds.select(sorted(order[:limit]), split=ds.info.split)


UNION_SEPARATOR = "+"
"""Joins dataset names into one dataset: ``advbench+harmbench-val+harmbench-test``."""


def _is_user_file(name: str) -> bool:
    """``jsonl:PATH`` / ``csv:PATH`` naming an existing file (whose path may itself contain a ``+``)."""
    scheme, sep, path = name.partition(":")
    return bool(sep) and scheme in USER_SCHEMES and Path(path).expanduser().is_file()


def _load_union(names: str, opts: Mapping[str, Any], use_cache: bool) -> Dataset:
    """Several datasets of one kind as one, in the order named, each prompt once (first occurrence kept).

    Splits are by content hash (:mod:`.splits`), so a prompt lands in the same split in the union as
    in each part, and the train split of a union never holds a test prompt of a part.
    """
    if opts:
        raise ConfigError(f"dataset options {sorted(opts)} cannot be passed to a union of datasets ({names!r})",
                          fix="load the datasets one at a time to pass options, or drop them")
    parts = [part.strip() for part in names.split(UNION_SEPARATOR)]
    if any(not part for part in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"dataset union {names!r} has an empty or repeated name", fix="write e.g. advbench+harmbench-test")
    loaded = [load_dataset(part, use_cache=use_cache) for part in parts]
    kinds = {ds.info.kind for ds in loaded}
    if len(kinds) > 1:
        listing = ", ".join(f"{ds.info.name} ({ds.info.kind})" for ds in loaded)
        raise ConfigError(f"cannot join datasets of different kinds: {listing}", fix="join datasets of one kind, e.g. instruction sets")
    records: list[Record] = []
    seen_texts: set[str] = set()
    seen_ids: set[str] = set()
    for ds in loaded:
        for record in ds:
            text = normalize_text(record_text(record))
            if text in seen_texts:
                continue
            seen_texts.add(text)
            if record.id in seen_ids:
                record = dataclasses.replace(record, id=f"{ds.info.name}:{record.id}")
            seen_ids.add(record.id)
            records.append(record)
    info = DatasetInfo(name=names, kind=kinds.pop(), n=len(records), license="; ".join(ds.info.license for ds in loaded),
                       source="; ".join(ds.info.source for ds in loaded),
                       description="union of " + ", ".join(f"{ds.info.name} ({len(ds)})" for ds in loaded) + ", duplicates dropped")
    return Dataset(records, info)


def load_dataset(
    name_or_spec: str | DatasetSpec,
    *,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
    use_cache: bool = True,
    **opts: Any,
) -> Dataset:
    """Load a registered dataset, a spec, or a user file (``jsonl:PATH`` / ``csv:PATH``).

    Args:
        name_or_spec: a name from ``refusal-steer data list``, a :class:`DatasetSpec`, a user file, or
            names joined by ``+`` (``advbench+harmbench-test``: one dataset, each prompt once).
        split: ``"train"``, ``"val"`` or ``"test"`` (or a name from ``fractions``): keep only the records
            whose normalised text hashes into that split under ``seed`` (see :mod:`.splits`).
        limit: keep at most this many records, a seeded subsample in dataset order (smaller limits
            are subsets of larger ones under the same seed).
        seed: seed of the split and the subsample.
        fractions: split fractions, default train 0.5 / val 0.1 / test 0.4.
        use_cache: read and write the parsed-JSON cache (pinned sources only).
        **opts: dataset options, e.g. ``categories=["standard", "contextual"]`` for HarmBench,
            ``subjects="anatomy"`` for MMLU, ``column="text"`` for CSV files.

    Returns:
        The :class:`Dataset`; ``info.n`` is its size after split and limit.

    Raises:
        DatasetNotFoundError: unknown name or missing user file (the message lists the fix).
        EmptyDatasetError: the dataset, split or limit leaves no records.
        ConfigError: unknown option, bad split name, fractions or limit.

    Example:
        >>> test = load_dataset("advbench", split="test", seed=0)  # doctest: +SKIP
        >>> len(test), test.info.split  # doctest: +SKIP
        (234, 'test')
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}", fix="pass limit=N with N >= 1, or None")
    if isinstance(name_or_spec, str) and UNION_SEPARATOR in name_or_spec and not _is_user_file(name_or_spec):
        ds = _load_union(name_or_spec, opts, use_cache)
    elif isinstance(name_or_spec, str) and name_or_spec.split(":", 1)[0] in USER_SCHEMES and ":" in name_or_spec:
        scheme, path = name_or_spec.split(":", 1)
        if set(opts) - {"column"}:
            bad = sorted(set(opts) - {"column"})[0]
            raise ConfigError(f"{scheme}: files have no option {bad!r}", fix="their only option is column")
        records, info = load_user_file(scheme, path, **opts)
        ds: Dataset = Dataset(records, info)
    else:
        spec = name_or_spec if isinstance(name_or_spec, DatasetSpec) else get_spec(name_or_spec)
        _check_opts(spec, opts)
        ds = Dataset(_load_records(spec, opts, use_cache), spec.info())
    label = ds.info.name
    if not len(ds):
        raise EmptyDatasetError(f"dataset {label!r} has no records", fix="check the file or the options you passed")
    if split is not None:
        fracs = check_fractions(fractions if fractions is not None else DEFAULT_FRACTIONS)
        if split not in fracs:
            raise ConfigError(f"unknown split {split!r}", fix=f"use one of: {', '.join(fracs)}")
        ds = split_dataset(ds, seed=seed, fractions=fracs)[split]
        if not len(ds):
            raise EmptyDatasetError(
                f"split {split!r} of dataset {label!r} is empty", fix="use a bigger dataset or larger fraction"
            )
    if limit is not None:
        ds = _subsample(ds, limit, seed)
    return ds


def load_prompts(name: str, *, split: str, limit: int | None, seed: int = 0) -> list[str]:
    """The prompt texts of :func:`load_dataset` (same split, limit and seed): what the run stages fit and evaluate on."""
    return [record.prompt for record in load_dataset(name, split=split, limit=limit, seed=seed)]


def list_datasets(count: bool = True) -> list[DatasetInfo]:
    """Info for every registered dataset.

    Args:
        count: parse datasets not yet in the cache to report their real ``n`` (the count of a cached
            dataset is stored next to it). With False, ``n`` is None for datasets never loaded.

    Returns:
        One :class:`DatasetInfo` per registered name.
    """
    infos = []
    for name in dataset_names():
        spec = _REGISTRY[name]
        n = cached_count(cache_path(spec.name, spec.version, {}))
        if n is None and count:
            n = len(_load_records(spec, {}, use_cache=True))
        infos.append(spec.info(n))
    return infos


__all__ = [
    "DatasetSpec",
    "Loader",
    "register_dataset",
    "dataset",
    "get_spec",
    "dataset_names",
    "load_dataset",
    "load_prompts",
    "list_datasets",
]
