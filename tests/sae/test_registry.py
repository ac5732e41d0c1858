"""Registry and config validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from refusal_steer.errors import ConfigError
from refusal_steer.sae import registry
from refusal_steer.sae.topk import TopKConfig, TopKSae

from .conftest import ALL_ARCHITECTURES, build_cfg


def test_all_architectures_registered() -> None:
    assert registry.names()[:4] == ALL_ARCHITECTURES


def test_duplicate_name_raises() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("topk")(TopKSae)


def test_custom_kind_registers_and_dispatches() -> None:
    @dataclass
    class MyConfig(TopKConfig):
        ARCH: ClassVar[str] = "my_topk_test"

    @registry.register("my_topk_test")
    class MySae(TopKSae):
        config_class = MyConfig

    cfg = registry.config_from_dict({"arch": "my_topk_test", "d_in": 4, "d_sae": 8, "k": 2})
    assert isinstance(registry.build(cfg), MySae)


def test_unknown_arch_and_field() -> None:
    with pytest.raises(ConfigError, match="unknown SAE architecture"):
        registry.get("gated")
    with pytest.raises(ConfigError, match="kk"):
        registry.config_from_dict({"arch": "topk", "d_in": 4, "d_sae": 8, "kk": 2})


def test_config_roundtrip(arch: str) -> None:
    cfg = build_cfg(arch, point="resid_post.2")
    assert registry.config_from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["arch"] == arch


@pytest.mark.parametrize(
    "arch,field,value",
    [("topk", "d_in", 0), ("topk", "d_sae", -1), ("topk", "k", 999), ("topk", "dtype", "float64"), ("topk", "point", "layer 3"),
     ("topk", "normalize", "layer_norm"), ("relu_l1", "l1_coefficient", -1.0), ("jumprelu", "bandwidth", 0.0),
     ("batchtopk", "threshold_momentum", 1.0)],
)
def test_validation_names_the_field(arch: str, field: str, value) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        build_cfg(arch, **{field: value})
