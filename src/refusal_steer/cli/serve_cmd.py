"""``refusal-steer serve``: an OpenAI-compatible server with per-request steering (a thin layer over server/)."""

from __future__ import annotations

import os

import typer

from ..errors import ConfigError
from . import app
from ._common import err_console

API_KEY_ENV = "REFUSAL_STEER_API_KEY"


@app.command("serve")
def serve_cmd(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    preset: list[str] = typer.Option(None, "--preset", "-P",
                                     help="NAME=STEER, repeatable: a steer clients choose as model MODEL@NAME or \"steer\": \"NAME\" "
                                          "(STEER: a short form such as ablate:DIR, a steer file .yaml/.json, or none). "
                                          "The bare model id serves the unsteered model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    api_key: str = typer.Option(None, "--api-key", envvar=API_KEY_ENV, show_envvar=True,
                                help="Require 'Authorization: Bearer KEY' on every API request."),
    model_name: str = typer.Option(None, "--model-name", help="The id the base model is served under (default: its folder or spec)."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", min=1, help="Larger request bodies get 413."),
    max_prompt_tokens: int = typer.Option(4096, "--max-prompt-tokens", min=1, help="Longer prompts get 400."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="The largest max_tokens a request may ask for."),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", min=1, help="Chat budget when a request gives none."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests that may wait; one more gets 429."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Requests run together in one batch."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", min=0, help="How long to wait to fill a batch."),
    timeout_s: float = typer.Option(300.0, "--timeout", min=0.001, help="Seconds before an unanswered request gets 503."),
    dtype: str = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps..."),
) -> None:
    """Serve the model over an OpenAI-compatible API; each request picks one of the operator's presets (docs/serving.md)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError("refusal-steer serve needs fastapi and uvicorn", fix="pip install fastapi uvicorn") from exc
    from ..models import load_model
    from ..server import ServerConfig, create_app, load_presets

    try:
        config = ServerConfig(api_key=api_key or None, max_body_bytes=max_body_bytes, max_prompt_tokens=max_prompt_tokens,
                              max_tokens=max_tokens, default_max_tokens=default_max_tokens, max_queue=max_queue,
                              max_batch=max_batch, max_wait_ms=max_wait_ms, timeout_s=timeout_s)
    except ValueError as exc:
        raise ConfigError(str(exc), fix="--default-max-tokens must not exceed --max-tokens") from exc
    lm = load_model(model, dtype=dtype, device=device)
    presets = load_presets(lm, list(preset or []))
    application = create_app(lm, presets, config, model_id=model_name)
    model_id = application.state.model_id
    err_console.print(f"serving {model_id} on http://{host}:{port}/v1 ({'API key required' if config.api_key else 'no API key'})",
                      highlight=False)
    for name, p in presets.items():
        served = model_id if name == "none" else f"{model_id}@{name}"
        err_console.print(f"  {served:<40} fingerprint {p.fingerprint}  ({p.spec})", highlight=False, markup=False)
    if config.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] listening on {host} without an API key (set --api-key or {API_KEY_ENV})")
    uvicorn.run(application, host=host, port=port, log_level="info" if os.environ.get("REFUSAL_STEER_DEBUG") else "warning")
