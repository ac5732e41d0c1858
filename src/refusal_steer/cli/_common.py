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


def steer_help(what: str = "Steer with") -> str:
    """The ``--steer`` help, listing the short forms registered now (not a hand-written list)."""
    from ..interventions import short_forms_help

    return (f"{what}: a short form ({short_forms_help()}; options key=value, e.g. actadd:DIR:coef=2.5), 'none', or a steer "
            "file (.yaml/.json, docs/steers.md); repeat to combine.")
