"""An OpenAI-compatible server with per-request steering (``refusal-steer serve``).

Operators declare named presets (any ``--steer`` value); clients pick one per request with the model
name ``MODEL@PRESET`` or ``"steer": "PRESET"``. Requests under the same preset and sampling settings
are batched; each batch runs under its preset's interventions alone, through the same library
generation ``eval`` and ``generate`` use. See docs/serving.md.

Example::

    import refusal_steer as rs
    from refusal_steer.server import ServerConfig, create_app, load_presets

    lm = rs.load_model("default")
    app = create_app(lm, load_presets(lm, ["ablated=ablate:runs/demo/direction"]), ServerConfig(api_key="secret"))
"""

from __future__ import annotations

from .config import ServerConfig
from .errors import APIError
from .presets import BASE_PRESET, Preset, load_presets, parse_preset_arg

__all__ = ["APIError", "BASE_PRESET", "Preset", "ServerConfig", "create_app", "load_presets", "parse_preset_arg"]


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """:func:`refusal_steer.server.app.create_app` (imported on use: FastAPI loads only when serving)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
