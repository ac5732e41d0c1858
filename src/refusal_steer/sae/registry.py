"""Architecture registry: name -> (SAE class, config class).

``cfg.json`` stores the name under ``arch`` and loading dispatches on it. The built-in kinds are
imported lazily on first lookup, so registration is never a side effect of importing the package.

Example:
    >>> from refusal_steer.sae import registry
    >>> sae_cls, cfg_cls = registry.get("topk")
    >>> sae = sae_cls(cfg_cls(d_in=8, d_sae=32, k=4))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Sae
    from .config import SaeConfig

S = TypeVar("S", bound="type[Sae]")

#: Built-in kinds and the module that registers each (imported on first lookup).
BUILTIN_MODULES: dict[str, str] = {
    "relu_l1": "refusal_steer.sae.relu_l1",
    "topk": "refusal_steer.sae.topk",
    "batchtopk": "refusal_steer.sae.batchtopk",
    "jumprelu": "refusal_steer.sae.jumprelu",
}

_REGISTRY: dict[str, tuple[type[Sae], type[SaeConfig]]] = {}


def register(name: str) -> Callable[[S], S]:
    """Class decorator registering an SAE kind under ``name``; registering a name twice raises.

    The class must define ``config_class`` (a :class:`~refusal_steer.sae.config.SaeConfig` subclass
    whose ``ARCH`` equals ``name``).
    """

    def deco(cls: S) -> S:
        if name in _REGISTRY:
            raise ConfigError(f"SAE architecture '{name}' is already registered", fix="pick another name")
        cfg_cls = cls.config_class
        if cfg_cls.ARCH != name:
            raise ConfigError(f"{cfg_cls.__name__}.ARCH is '{cfg_cls.ARCH}', expected '{name}'")
        _REGISTRY[name] = (cls, cfg_cls)
        return cls

    return deco


def get(name: str) -> tuple[type[Sae], type[SaeConfig]]:
    """The (SAE class, config class) registered under ``name``.

    Raises:
        ConfigError: for an unknown name (the message lists the known ones).
    """
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise ConfigError(f"unknown SAE architecture '{name}'", fix=f"use one of {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Every registered architecture name (built-ins first)."""
    for mod in BUILTIN_MODULES.values():
        importlib.import_module(mod)
    return [n for n in BUILTIN_MODULES if n in _REGISTRY] + [n for n in _REGISTRY if n not in BUILTIN_MODULES]


def config_from_dict(data: dict[str, Any]) -> SaeConfig:
    """Build the right config class from a dict holding ``arch``."""
    if "arch" not in data:
        raise ConfigError("SAE config has no 'arch' field", fix=f"add \"arch\": one of {names()}")
    return get(data["arch"])[1].from_dict(data)


def build(cfg: SaeConfig) -> Sae:
    """A freshly initialised SAE of the kind named by ``cfg.arch``."""
    return get(cfg.arch)[0](cfg)


__all__ = ["register", "get", "names", "config_from_dict", "build", "BUILTIN_MODULES"]
