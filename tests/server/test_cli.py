"""``refusal-steer serve``: presets parsed at startup, limits passed through, errors as one line with a fix."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from refusal_steer.cli import build_app
from refusal_steer.errors import ConfigError
from refusal_steer.server import parse_preset_arg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, lm):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def test_serve_builds_the_app_with_presets_and_limits(model_dir, preset_specs, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    monkeypatch.setenv("REFUSAL_STEER_API_KEY", "from-env")
    args = ["serve", "--model", str(model_dir), "--preset", f"ablated={preset_specs['ablated']}",
            "--preset", f"filed={preset_specs['filed']}", "--port", "8123", "--max-queue", "3", "--timeout", "9"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    state = seen["app"].state
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert list(state.presets) == ["none", "ablated", "filed"] and state.model_id == model_dir.name
    assert state.config.api_key == "from-env" and state.config.max_queue == 3 and state.config.timeout_s == 9
    state.scheduler.stop()


def test_serve_rejects_a_bad_preset_before_serving(model_dir, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not serve"))
    result = CliRunner().invoke(build_app(), ["serve", "--model", str(model_dir), "--preset", "x=ablate:/does/not/exist"])
    assert isinstance(result.exception, ConfigError) or result.exit_code != 0
    assert "--preset x" in str(result.exception)


@pytest.mark.parametrize("text", ["noequals", "=none", "a@b=none", "none=none", "x="])
def test_preset_arg_errors_say_how_to_fix(text):
    with pytest.raises(ConfigError) as info:
        parse_preset_arg(text)
    assert info.value.fix


def test_duplicate_preset_names_are_refused(lm):
    from refusal_steer.server import load_presets

    with pytest.raises(ConfigError, match="twice"):
        load_presets(lm, ["a=none", "a=none"])


def test_docs_name_only_real_serve_options():
    """Every --option docs/serving.md and the README give `refusal-steer serve` exists (and the limits table is complete)."""
    import re
    from pathlib import Path

    import typer

    root = Path(__file__).resolve().parents[2]
    command = typer.main.get_command(build_app()).commands["serve"]
    real = {opt for param in command.params for opt in param.opts if opt.startswith("--")}
    docs = (root / "docs" / "serving.md").read_text()
    readme = (root / "README.md").read_text()
    serve_lines = [line for text in (docs, readme) for line in text.splitlines() if "refusal-steer serve" in line]
    table = docs[docs.index("## Limits and errors"): docs.index("## Examples")]
    named = {opt for line in serve_lines + table.splitlines() for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]+", line)}
    assert named and named <= real, sorted(named - real)
    limits = {"--max-body-bytes", "--max-prompt-tokens", "--max-tokens", "--default-max-tokens", "--max-queue", "--max-batch",
              "--max-wait-ms", "--timeout"}
    assert limits <= real and limits <= named
