"""The server's limits and settings, one documented field each (the CLI options mirror them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Bounds on what one request may ask and how much may wait.

    Every field must be positive; violations are answered with OpenAI-style errors (see docs/serving.md).
    """

    api_key: str | None = None
    """When set, every /v1, /tokenize, /detokenize and /tokenizer_info request needs ``Authorization: Bearer KEY``."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies are refused with 413."""
    max_prompt_tokens: int = 4096
    """Longer prompts (after chat formatting) are refused with 400."""
    max_tokens: int = 1024
    """The largest ``max_tokens`` / ``max_completion_tokens`` a request may ask for (400 above)."""
    default_max_tokens: int = 256
    """The chat budget when a request gives none (completions default to 16, as OpenAI's do)."""
    max_logprobs: int = 20
    """The largest ``logprobs`` (top-k alternatives) a completions request may ask for."""
    max_queue: int = 64
    """Requests waiting for the model; one more is refused with 429."""
    max_batch: int = 8
    """Requests run together in one batch (same preset and sampling settings)."""
    max_wait_ms: float = 10.0
    """How long the worker waits to fill a batch before running it."""
    timeout_s: float = 300.0
    """A request not answered within this many seconds (queue wait included) gets 503."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "default_max_tokens", "max_queue", "max_batch", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.max_logprobs < 0 or self.max_wait_ms < 0:
            raise ValueError("ServerConfig.max_logprobs and max_wait_ms must be >= 0")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"ServerConfig.default_max_tokens ({self.default_max_tokens}) exceeds max_tokens ({self.max_tokens})")
