"""Shared CLI state and helpers: consoles, JSON output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class _State:
    debug: bool = False


state = _State()


def print_json(obj: Any) -> None:
    """Print machine-readable JSON on stdout (no rich markup, no wrapping)."""
    print(json.dumps(obj, indent=2, default=str))
