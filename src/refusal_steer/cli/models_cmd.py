"""``refusal-steer models``: inspect a model's family, sizes and chat template."""

from __future__ import annotations

import typer
from rich.table import Table

from . import app
from ._common import console, print_json

models_app = typer.Typer(help="Inspect models: family, layers, widths, chat template.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("info")
def info(
    model: str = typer.Argument("default", help="'default', 'smollm2', a local dir, a .gguf file or a hub id."),
    dtype: str = typer.Option(None, help="float32, bfloat16, float16 or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Load MODEL and print its family, n_layers, d_model, heads, head_dim, vocab size and chat template status."""
    from ..models import load_model

    summary = load_model(model, dtype=dtype).info()
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"model {model}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


@models_app.command("families")
def families(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """List the supported model families (config.model_type values)."""
    from ..models import supported_families

    names = supported_families()
    if as_json:
        print_json(names)
    else:
        console.print("\n".join(names))
