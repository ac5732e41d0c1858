"""``refusal-steer data list/show`` through typer's runner on the data sub-app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refusal_steer.cli.data_cmd import data_app
from refusal_steer.errors import ConfigError, DatasetNotFoundError

runner = CliRunner()


def test_list_json_has_every_field() -> None:
    result = runner.invoke(data_app, ["list", "--json", "--no-count"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = {row["name"] for row in rows}
    assert {"advbench", "harmless", "mmlu", "sharegpt"} <= names
    for row in rows:
        assert set(row) == {"name", "n", "license", "source", "kind", "description"}
        assert row["license"]


def test_show_json_user_csv(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("text\nWrite a poem\nName a colour\nHi\n", encoding="utf-8")
    result = runner.invoke(data_app, ["show", f"csv:{path}", "--column", "text", "--n", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["info"]["n"] == 3 and out["info"]["license"] == "user-provided"
    assert [r["prompt"] for r in out["records"]] == ["Write a poem", "Name a colour"]


def test_show_table_with_options_and_split() -> None:
    result = runner.invoke(
        data_app, ["show", "harmbench-val", "--opt", "categories=standard,copyright", "--split", "test", "--n", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "harmbench-val" in result.output and "split test" in result.output and "MIT" in result.output


def test_show_unknown_dataset_raises_library_error() -> None:
    result = runner.invoke(data_app, ["show", "advbnech"])
    assert isinstance(result.exception, DatasetNotFoundError)


@pytest.mark.parametrize("args", [["--opt", "novalue"], ["--column", "text"]])
def test_show_bad_options(args: list[str]) -> None:
    result = runner.invoke(data_app, ["show", "advbench", *args])
    assert isinstance(result.exception, ConfigError)
