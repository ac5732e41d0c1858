"""One exception hierarchy for every user-facing failure.

Each error carries a one-line ``message`` (what went wrong) and a ``fix`` (what to do about it).
The CLI prints both without a traceback; ``--debug`` shows the traceback too.
"""

from __future__ import annotations


class RefusalSteerError(Exception):
    """Base class: a failure the user can act on, with the fix spelled out."""

    default_fix: str = ""

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix if fix is not None else self.default_fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class ConfigError(RefusalSteerError, ValueError):
    """A bad option, field or combination of options."""


class ModelNotFoundError(RefusalSteerError):
    """The model spec names nothing that can be loaded."""

    default_fix = "pass 'default', a local directory with config.json, a local .gguf file, or a Hugging Face id (needs network)"


class UnsupportedFamilyError(RefusalSteerError):
    """The model's architecture has no adapter entry."""


class NetworkUnavailableError(RefusalSteerError):
    """A download was needed but the package registry or hub could not be reached."""


class HashMismatchError(RefusalSteerError):
    """A downloaded, cached or assembled file does not match its pinned sha256."""


class CorruptFileError(RefusalSteerError):
    """A file exists but cannot be parsed (truncated, wrong format)."""


class DatasetNotFoundError(RefusalSteerError):
    """Unknown dataset name or a user file that does not exist."""

    default_fix = "run 'refusal-steer data list' for the registered names, or use jsonl:PATH / csv:PATH"


class EmptyDatasetError(RefusalSteerError):
    """A dataset, split or filter produced no prompts."""


class HookPointError(RefusalSteerError, ValueError):
    """A hook point string or value is malformed or outside the model (wrong layer, head, site)."""


class ShapeMismatchError(RefusalSteerError, ValueError):
    """A tensor's width, dtype or shape does not fit where it is used (direction vs d_model, SAE width)."""


class ChatTemplateError(RefusalSteerError):
    """The tokenizer has no chat template and none was given."""

    default_fix = "pass chat_template=... (a Jinja string) or use a chat/instruct model"


class ResourceExhaustedError(RefusalSteerError):
    """Out of memory even at batch size 1."""

    default_fix = "use a smaller model, a lower-precision dtype (--dtype bfloat16), fewer tokens, or a GPU"


__all__ = [
    "RefusalSteerError",
    "ConfigError",
    "ModelNotFoundError",
    "UnsupportedFamilyError",
    "NetworkUnavailableError",
    "HashMismatchError",
    "CorruptFileError",
    "DatasetNotFoundError",
    "EmptyDatasetError",
    "HookPointError",
    "ShapeMismatchError",
    "ChatTemplateError",
    "ResourceExhaustedError",
]
