"""The attacker model of multi-turn attacks: the target model itself, in process, or any OpenAI-compatible endpoint.

An attacker maps conversations (system + alternating user/assistant messages) to its next reply. The in-process
attacker generates greedily with **no** interventions, so a steer under test never steers its own attacker; the
endpoint attacker POSTs ``{base_url}/chat/completions`` with the standard library only (like the ``llm`` judge).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

from ...errors import ConfigError, NetworkUnavailableError
from ...generation import generate
from ...models.loaded import LoadedModel
from .base import Message


class Attacker(Protocol):
    """Replies to a batch of conversations, one reply each."""

    def __call__(self, conversations: Sequence[Sequence[Message]]) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...


class LocalAttacker:
    """A model loaded in this process as the attacker (greedy, unsteered).

    Args:
        lm: the attacker model (by default the target model itself).
        max_new_tokens: reply budget; Crescendo replies are a small JSON object.
        batch_size: conversations per generation batch.
    """

    def __init__(self, lm: LoadedModel, max_new_tokens: int = 192, batch_size: int = 8) -> None:
        self.lm, self.max_new_tokens, self.batch_size = lm, max_new_tokens, batch_size

    def __call__(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        completions = generate(self.lm, [list(c) for c in conversations], (), max_new_tokens=self.max_new_tokens,
                               batch_size=self.batch_size, progress=False)
        return [c.text for c in completions]

    def describe(self) -> dict[str, Any]:
        return {"kind": "in-process", "model": self.lm.spec, "max_new_tokens": self.max_new_tokens, "steer": "none"}


class EndpointAttacker:
    """An attacker behind an OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, OpenAI...).

    Args:
        base_url: endpoint root including ``/v1``.
        model: the model name it serves.
        api_key_env: environment variable holding the key (may be unset for local servers); never stored.
        temperature, max_tokens, timeout, retries: request settings (retries on connection errors, 429, 5xx).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0,
                 max_tokens: int = 256, timeout: float = 120.0, retries: int = 2) -> None:
        if not model:
            raise ConfigError("an endpoint attacker needs a model name", fix="pass --attacker-model NAME")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.temperature, self.max_tokens, self.timeout, self.retries = temperature, max_tokens, timeout, retries

    def reply(self, messages: Sequence[Message]) -> str:
        body = json.dumps({"model": self.model, "messages": list(messages), "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return str(payload["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as exc:
                if not (exc.code == 429 or exc.code >= 500) or attempt == self.retries:
                    detail = exc.read().decode("utf-8", "replace")[:300]
                    raise ConfigError(f"attacker endpoint {url} answered HTTP {exc.code}: {detail}",
                                      fix="check --attacker, --attacker-model and the API key") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.retries:
                    raise NetworkUnavailableError(f"cannot reach the attacker endpoint {url}: {exc}",
                                                  fix="check --attacker and the network, or use --attacker in-process") from exc
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                raise ConfigError(f"attacker endpoint {url} did not answer an OpenAI chat completion: {exc}",
                                  fix="point --attacker at an OpenAI-compatible /v1 root") from exc
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def __call__(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        return [self.reply(c) for c in conversations]

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "base_url": self.base_url, "model": self.model, "temperature": self.temperature}


def make_attacker(spec: str, lm: LoadedModel, *, model: str | None = None, max_new_tokens: int = 192,
                  batch_size: int = 8) -> Attacker:
    """``in-process`` (the target model, unsteered) or an ``http(s)://`` endpoint root serving ``model``."""
    if spec in ("in-process", "", None):
        return LocalAttacker(lm, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if spec.startswith(("http://", "https://")):
        return EndpointAttacker(spec, model or "", max_tokens=max_new_tokens)
    raise ConfigError(f"--attacker {spec!r} is neither 'in-process' nor an http(s) URL",
                      fix="use --attacker in-process or --attacker http://HOST:PORT/v1 --attacker-model NAME")
