"""The FastAPI application: middleware (body size, API key), error handlers, and the app factory.

The routes live in :mod:`.routes`; the model runs only in the scheduler's worker thread
(:mod:`.scheduler`, :mod:`.engine`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RefusalSteerError
from ..models.loaded import LoadedModel
from .config import ServerConfig
from .engine import Engine
from .errors import APIError, error_body, unauthorized
from .presets import Preset
from .scheduler import Scheduler

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/", "/health"})
"""Paths answered without an API key (liveness checks)."""


def model_id_of(lm: LoadedModel) -> str:
    """The id the base model is served under: the folder or file name of its spec, or the spec itself."""
    spec = str(lm.spec)
    name = Path(spec).name if ("/" in spec or spec.endswith(".gguf")) and Path(spec).exists() else spec
    return name.removesuffix(".gguf") or spec


def create_app(lm: LoadedModel, presets: Mapping[str, Preset], config: ServerConfig = ServerConfig(), *,
               model_id: str | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``lm`` under ``presets`` (from :func:`.presets.load_presets`).

    The worker thread starts now and stops when the app shuts down.

    Example:
        >>> app = create_app(lm, load_presets(lm, ["ablated=ablate:runs/demo/direction"]))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from . import routes

    engine = Engine(lm, presets)
    scheduler = Scheduler(engine.run_batch, max_queue=config.max_queue, max_batch=config.max_batch,
                          max_wait_s=config.max_wait_ms / 1000).start()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        scheduler.stop()

    app = FastAPI(title="refusal-steer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.scheduler = scheduler
    app.state.config = config
    app.state.model_id = model_id or model_id_of(lm)
    app.state.presets = dict(presets)
    app.include_router(routes.router)
    _install_error_handlers(app)
    # Outermost first: the body limit runs before anything reads the body, the key check before routing.
    app.add_middleware(_ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(_BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    return app


def _json_error(status: int, message: str, **kwargs: Any) -> JSONResponse:
    return JSONResponse(error_body(message, **kwargs), status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            message, loc = "the body is not valid JSON", []
        param = ".".join(loc) or None
        return _json_error(400, f"{param}: {message}" if param else message, param=param, code="invalid_request")

    @app.exception_handler(RefusalSteerError)
    async def _library(_request: Request, exc: RefusalSteerError) -> JSONResponse:
        return _json_error(400, str(exc), code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _json_error(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _json_error(500, "internal server error (details are in the server log)", type="server_error", code="internal_error")


async def _send_error(send: Any, status: int, body: dict[str, Any]) -> None:
    import json

    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class _BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 (by Content-Length, and by counting chunked bodies)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_body(f"the request body is larger than {self.max_bytes} bytes", code="request_too_large")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _send_error(send, 413, too_large)
            return
        # Read the whole (bounded) body now, then replay it; later receives (disconnect) pass through.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _ApiKeyMiddleware:
    """Check ``Authorization: Bearer KEY`` in constant time (``hmac.compare_digest``) on every closed path."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                error = unauthorized()
                await _send_error(send, error.status, error.body())
                return
        await self.app(scope, receive, send)
