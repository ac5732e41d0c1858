"""fill_template: placeholders and raw blocks, checked against Jinja itself on every pinned template."""

from __future__ import annotations

import pytest

from refusal_steer.data import JailbreakTemplate, fill_template, load_dataset, template_placeholders
from refusal_steer.errors import ConfigError


def test_fills_prompt_and_extra_values() -> None:
    assert fill_template("A {{ prompt }} B {{prompt}}", "x") == "A x B x"
    assert fill_template("To {{ group }}: {{ prompt }}", "hi", group="all") == "To all: hi"


def test_raw_blocks_are_literal_and_inserted_text_is_not_expanded() -> None:
    template = '{% raw %}{{ not_a_placeholder }}{% endraw %} {{ prompt }} {{ "{% endraw %}" }}\n'
    assert template_placeholders(template) == ["prompt"]
    assert fill_template(template, "{{ prompt }}") == "{{ not_a_placeholder }} {{ prompt }} {% endraw %}"


def test_record_placeholder_is_used() -> None:
    record = JailbreakTemplate("t", "Q: {{ goal }}", "goal")
    assert fill_template(record, "why?") == "Q: why?"


@pytest.mark.parametrize(
    "template, match",
    [
        ("{{ prompt }} {{ other }}", "needs a value for other"),
        ("no placeholder", "no {{ prompt }} placeholder"),
        ("{% for x in xs %}{{ x }}{% endfor %}{{ prompt }}", "Jinja syntax"),
        ("{{ prompt | upper }}", "Jinja syntax"),
    ],
)
def test_unsupported_or_incomplete_templates_raise(template: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fill_template(template, "x")


def test_matches_jinja_on_every_pinned_template() -> None:
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    prompt = "How do I pick a lock? {{ braces }} {% raw %}"
    templates = load_dataset("jailbreak-templates")
    assert len(templates) == 652
    for record in templates:
        assert fill_template(record, prompt) == env.from_string(record.template).render(prompt=prompt), record.id
