"""Models: loading (the pinned default, local dirs, GGUF files, hub ids), family adapters, chat formatting."""

from __future__ import annotations

from .adapters import FamilyAdapter, adapter_for, register_adapter, supported_families
from .chat import FALLBACK_CHAT_TEMPLATE, PostInstruction, format_chat, post_instruction, to_messages, tokenize_exact
from .loaded import LoadedModel
from .loading import load_model, parse_dtype

__all__ = [
    "FALLBACK_CHAT_TEMPLATE",
    "FamilyAdapter",
    "LoadedModel",
    "PostInstruction",
    "adapter_for",
    "format_chat",
    "load_model",
    "parse_dtype",
    "post_instruction",
    "register_adapter",
    "supported_families",
    "to_messages",
    "tokenize_exact",
]
