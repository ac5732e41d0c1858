"""Jailbreak material from PyRIT: single-turn templates, many-shot examples, Crescendo attacker prompts."""

from __future__ import annotations

import json
from typing import Any

from ...errors import ConfigError, CorruptFileError
from ..records import Conversation, JailbreakTemplate, Text
from ..registry import dataset
from ..templates import template_placeholders
from ._pins import PYRIT, Member, decode, read_members, safe_yaml

TEMPLATES_DIR = "pyrit/datasets/jailbreak/templates/"
MANY_SHOT = Member(
    PYRIT,
    "pyrit/datasets/jailbreak/many_shot_examples.json",
    "35871679fc865ace138564cab78dc295885292918518fc5a69200aa7e06d91df",
)
CRESCENDO_DIR = "pyrit/datasets/executors/crescendo/"
_PYRIT_LICENSE = "MIT (PyRIT)"
_META_KEYS = ("name", "description", "source", "authors", "groups", "parameters")


def _yaml_doc(data: bytes, where: str) -> dict[str, Any]:
    doc = safe_yaml(decode(data, where))
    if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
        raise CorruptFileError(f"{where} has no string 'value'", fix="the pinned file changed; report it")
    return doc


def _meta(doc: dict[str, Any], path: str) -> dict[str, Any]:
    # Only plain fields, so the record survives the JSON cache unchanged.
    meta = {k: doc[k] for k in _META_KEYS if isinstance(doc.get(k), (str, list))}
    return {**meta, "path": path}


@dataset(
    "jailbreak-templates",
    kind="jailbreak_template",
    license=_PYRIT_LICENSE,
    source=f"{PYRIT.requirement}: {TEMPLATES_DIR}*.yaml",
    description="single-turn jailbreak wrappers with one {{ prompt }} placeholder; fill with fill_template(t, prompt)",
)
def load_jailbreak_templates() -> list[JailbreakTemplate]:
    """PyRIT's jailbreak templates whose only parameter is ``prompt`` (3 multi-parameter ones are left out)."""
    records = []
    for path, data in read_members(PYRIT, TEMPLATES_DIR, ".yaml").items():
        doc = _yaml_doc(data, f"{PYRIT.requirement}: {path}")
        try:
            names = template_placeholders(doc["value"])
        except ConfigError:
            continue  # uses Jinja loops (the many-shot template): not a single-prompt wrapper
        if names != ["prompt"]:
            continue
        rid = path[len(TEMPLATES_DIR) : -len(".yaml")]
        records.append(JailbreakTemplate(rid, doc["value"], "prompt", _meta(doc, path)))
    return records


@dataset(
    "many-shot",
    kind="conversation",
    license=_PYRIT_LICENSE,
    source=MANY_SHOT.source,
    description="harmful user/assistant example pairs for many-shot jailbreaking (Anil et al. 2024)",
)
def load_many_shot() -> list[Conversation]:
    """The 400 many-shot examples, each as a two-message conversation."""
    items = json.loads(MANY_SHOT.read_text())
    if not isinstance(items, list):
        raise CorruptFileError(f"{MANY_SHOT.source} is not a JSON list", fix="the pinned file changed; report it")
    return [
        Conversation(
            f"many-shot-{i:03d}",
            [{"role": "user", "content": item["user"]}, {"role": "assistant", "content": item["assistant"]}],
            {"category": item.get("category", "")},
        )
        for i, item in enumerate(items)
    ]


@dataset(
    "crescendo",
    kind="text",
    license=_PYRIT_LICENSE,
    source=f"{PYRIT.requirement}: {CRESCENDO_DIR}crescendo_variant_*.yaml",
    description="Crescendo attacker system prompts (Russinovich et al. 2024) for multi-turn escalation; "
    "placeholders {{objective}}, {{max_turns}}",
)
def load_crescendo() -> list[Text]:
    """The five Crescendo attacker-instruction variants, as text with their parameters in meta."""
    members = read_members(PYRIT, f"{CRESCENDO_DIR}crescendo_variant_", ".yaml")
    records = []
    for path, data in members.items():
        doc = _yaml_doc(data, f"{PYRIT.requirement}: {path}")
        records.append(Text(path[len(CRESCENDO_DIR) : -len(".yaml")], doc["value"], _meta(doc, path)))
    return records
