"""Family adapter table: where each architecture keeps its blocks, attention, MLP, norm and unembedding.

All family knowledge lives here, keyed by ``config.model_type`` (never by substrings of a model name).
Paths are attribute paths relative to the causal-LM module (``model.layers``) or to one block
(``self_attn.o_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedFamilyError


@dataclass(frozen=True)
class FamilyAdapter:
    """Where one architecture family keeps the modules the hook engine needs.

    ``attn_write``/``mlp_write`` name the module whose *output is added to the residual stream*: the
    attention/MLP module itself for pre-norm families, the post-norm for Gemma 2/3 (which normalise
    each branch before adding it).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn: str = "self_attn"
    attn_o_proj: str = "self_attn.o_proj"
    attn_write: str = "self_attn"
    mlp: str = "mlp"
    mlp_down_proj: str = "mlp.down_proj"
    mlp_write: str = "mlp"
    # Output-projection weights stored as (in, out) (GPT-2's Conv1D) rather than nn.Linear's (out, in).
    conv1d_weights: bool = False
    post_norm_branches: bool = False


_ADAPTERS: dict[str, FamilyAdapter] = {}


def register_adapter(adapter: FamilyAdapter) -> FamilyAdapter:
    """Add a family to the table; a model_type registered twice is an error."""
    for model_type in adapter.model_types:
        if model_type in _ADAPTERS:
            raise ValueError(f"model_type {model_type!r} already has an adapter ({_ADAPTERS[model_type].family})")
        _ADAPTERS[model_type] = adapter
    return adapter


register_adapter(FamilyAdapter(family="qwen2", model_types=("qwen2",)))
register_adapter(FamilyAdapter(family="llama", model_types=("llama",)))
register_adapter(FamilyAdapter(family="mistral", model_types=("mistral",)))
register_adapter(FamilyAdapter(family="phi3", model_types=("phi3",)))
for _family, _types in (("gemma2", ("gemma2",)), ("gemma3", ("gemma3_text",))):
    register_adapter(
        FamilyAdapter(
            family=_family,
            model_types=_types,
            attn_write="post_attention_layernorm",
            mlp_write="post_feedforward_layernorm",
            post_norm_branches=True,
        )
    )
register_adapter(
    FamilyAdapter(
        family="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        attn="attn",
        attn_o_proj="attn.c_proj",
        attn_write="attn",
        mlp_down_proj="mlp.c_proj",
        conv1d_weights=True,
    )
)


def supported_families() -> list[str]:
    """Names of the model_types with an adapter, sorted."""
    return sorted(_ADAPTERS)


def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter for a ``config.model_type``, or a clear error listing the supported ones."""
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedFamilyError(
            f"model family {model_type!r} is not supported",
            fix=f"use a model of a supported family ({', '.join(supported_families())}) or add a FamilyAdapter "
            "with register_adapter()",
        ) from None


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted attribute path, with an error that names the path on failure."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise UnsupportedFamilyError(
                f"{type(root).__name__} has no submodule {path!r} (stopped at {part!r})",
                fix="this checkpoint's layout differs from its family's adapter; check models/adapters.py",
            )
        module = getattr(module, part)
    return module
