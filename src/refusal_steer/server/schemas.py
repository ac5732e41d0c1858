"""Request bodies of the OpenAI-compatible endpoints (pydantic, strict types, unknown fields rejected).

Fields OpenAI defines that this server does not implement are accepted only at their neutral value
(``n: 1``, ``presence_penalty: 0``...), so a client that sends them by default still works and one that
relies on them is told so (400) instead of being silently ignored. ``steer`` and ``compare`` are this
server's own fields (``extra_body`` in the ``openai`` client).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_STRICT = ConfigDict(strict=True, extra="forbid")

MAX_STOPS = 16


class TextPart(BaseModel):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is served."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One turn: system (or developer), user or assistant, with text content."""

    model_config = ConfigDict(strict=True, extra="ignore")  # clients add 'name', 'refusal', ... to echoed turns
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        """The content as one string (text parts joined with newlines)."""
        return self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both generation endpoints."""

    model_config = _STRICT
    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    steer: str | None = None
    """This server's field: the preset to steer with (same as model ``MODEL@PRESET``)."""
    compare: bool = False
    """This server's field: also return the unsteered (baseline) answer."""

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else (value or [])
        # OpenAI takes 4; lm-evaluation-harness's local-completions sends a task's whole 'until' list plus EOS.
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOPS} non-empty strings")
        return value

    @model_validator(mode="after")
    def _neutral(self) -> "_Sampling":
        if self.n not in (None, 1):
            raise ValueError("n must be 1: this server returns one choice per request (send several requests)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                raise ValueError(f"{name} is not supported (send 0 or leave it out)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported (leave it out)")
        if self.compare and self.stream:
            raise ValueError("compare is not available with stream; send stream: false")
        return self

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _chat(self) -> "ChatCompletionRequest":
        if self.logprobs or self.top_logprobs:
            raise ValueError("logprobs are served by /v1/completions (echo + logprobs), not by chat completions")
        return self

    def budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (the legacy API lm-evaluation-harness's ``local-completions`` uses)."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(default=None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion(self) -> "CompletionRequest":
        if self.best_of not in (None, 1):
            raise ValueError("best_of must be 1")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is an empty list")
        return self


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (vLLM's shape, which lm-evaluation-harness's remote tokenizer reads)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    model: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``."""

    model_config = ConfigDict(strict=True, extra="ignore")
    tokens: list[int]
    model: str | None = None
