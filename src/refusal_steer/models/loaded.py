"""``LoadedModel``: a Hugging Face causal LM, its tokenizer and its family adapter, with the sizes people ask for."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from .adapters import FamilyAdapter, adapter_for, get_submodule


@dataclass(eq=False)
class LoadedModel:
    """A causal LM ready for hooking: ``model`` (HF module), ``tokenizer`` and its ``adapter``.

    Args:
        model: a transformers ``PreTrainedModel`` with a causal-LM head.
        tokenizer: its tokenizer (fast tokenizers give exact post-instruction positions).
        spec: how the model was named when loaded (``"default"``, a path, a hub id).
        source_sha256: sha256 of the file the weights came from, when known (recorded in run manifests).
    """

    model: nn.Module
    tokenizer: Any
    spec: str = "<in-memory>"
    source_sha256: str | None = None
    adapter: FamilyAdapter = field(init=False)
    # Set by the hook engine while interventions are installed; see hooks.py.
    _hook_state: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.adapter = adapter_for(self.config.model_type)
        if getattr(self.tokenizer, "pad_token_id", None) is None and self.tokenizer is not None:
            # Left-padded batches need a pad token; the EOS token is the usual stand-in and is masked out.
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def config(self) -> Any:
        return self.model.config

    @cached_property
    def layers(self) -> nn.ModuleList:
        """The list of transformer blocks."""
        return get_submodule(self.model, self.adapter.layers)

    def block_module(self, layer: int, path: str) -> nn.Module:
        """A submodule of block ``layer`` by its adapter path (e.g. ``adapter.attn_o_proj``)."""
        return get_submodule(self.layers[layer], path)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def head_dim(self) -> int:
        head_dim = getattr(self.config, "head_dim", None)
        return int(head_dim) if head_dim else self.d_model // self.n_heads

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def info(self) -> dict[str, Any]:
        """A JSON-able summary (what ``refusal-steer models info --json`` prints)."""
        return {
            "spec": self.spec,
            "family": self.adapter.family,
            "model_type": self.config.model_type,
            "architecture": type(self.model).__name__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "has_chat_template": self.has_chat_template,
            "source_sha256": self.source_sha256,
        }
