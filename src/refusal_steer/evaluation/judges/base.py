"""The judge contract and the name -> factory registry.

A judge decides, for each (prompt, completion) pair, whether the completion is a refusal. Judges are
registered by name (``substring``, ``classifier``, ``llm``), one module each; registering a name twice
raises. Every judge has a ``version`` that is stored next to every number it produced.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ...errors import ConfigError, RefusalSteerError


class JudgeError(RefusalSteerError):
    """A judge could not produce a verdict (unreadable classifier, endpoint error, unparsable reply)."""


@runtime_checkable
class Judge(Protocol):
    """Maps prompts and completions to booleans "refused"."""

    #: Registry name, e.g. ``"substring"``.
    name: str
    #: Version string recorded with every number (changes whenever verdicts could change).
    version: str

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[bool]: ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (name, version and the options that affect verdicts)."""
        ...


JudgeFactory = Callable[..., Judge]
_REGISTRY: dict[str, JudgeFactory] = {}


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Decorator registering a judge factory under ``name``; a name registered twice raises ``ValueError``.

    Example:
        >>> @register_judge("always-refuses")  # doctest: +SKIP
        ... class AlwaysRefuses: ...
    """

    def decorate(factory: JudgeFactory) -> JudgeFactory:
        if name in _REGISTRY:
            raise ValueError(f"judge {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return decorate


def judge_names() -> list[str]:
    """Names of the registered judges."""
    return sorted(_REGISTRY)


def get_judge(spec: str | Judge, **options: Any) -> Judge:
    """Build a judge from its name (or ``name:ARG``, the judge's main option) and options.

    ``classifier:DIR`` is ``get_judge("classifier", path=DIR)``; ``llm:MODEL`` is
    ``get_judge("llm", model=MODEL)``. A judge object is returned unchanged.

    Args:
        spec: a registered name, ``name:ARG``, or a ready judge.
        **options: keyword options of the judge's factory (strings from the CLI are converted).

    Returns:
        The judge.

    Raises:
        ConfigError: unknown name or option.

    Example:
        >>> get_judge("substring").version
        'v2'
    """
    if not isinstance(spec, str):
        if options:
            raise ConfigError("options were given together with a ready judge object", fix="pass options to its constructor")
        return spec
    name, sep, arg = spec.partition(":")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown judge {name!r}{hint}", fix=f"use one of: {', '.join(judge_names())}")
    factory = _REGISTRY[name]
    if sep:
        main = getattr(factory, "main_option", None)
        if main is None:
            raise ConfigError(f"judge {name!r} takes no ':ARG' form", fix=f"write --judge {name}")
        options = {main: arg, **options}
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for judge {name!r}: {exc}", fix="see the judge's docs for its options") from exc


def parse_judge_options(items: Sequence[str]) -> dict[str, str]:
    """Parse CLI ``KEY=VALUE`` strings into a dict (values stay strings; factories convert them)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"cannot parse judge option {item!r}", fix="write --judge-opt KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out
