"""Users' own prompt files: ``jsonl:PATH`` and ``csv:PATH``.

JSONL: one object per line with ``prompt`` (or the field named by ``column``) for instructions, or
``messages`` (a list of ``{"role", "content"}``) for conversations; ``id`` is optional and other
fields go to ``meta``. CSV: a header row, the prompt in ``column`` (default ``prompt``), optional
``id``. Every problem is reported once, naming the file, the line and what to change.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptFileError, DatasetNotFoundError
from .records import Conversation, DatasetInfo, Instruction, Record

USER_SCHEMES = ("jsonl", "csv")
_ROLES = ("system", "user", "assistant", "tool")
_JSONL_EXAMPLE = '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'


def _resolve(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not path or not resolved.is_file():
        raise DatasetNotFoundError(
            f"no such file: {path!r}", fix="check the path (it is relative to the current directory)"
        )
    return resolved


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise CorruptFileError(
            f"{where}: 'messages' must be a non-empty list", fix=f"write lines like {_JSONL_EXAMPLE}"
        )
    out = []
    for k, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str) or msg.get("role") not in _ROLES:
            raise CorruptFileError(
                f"{where}: message {k} is not {{'role': one of {list(_ROLES)}, 'content': a string}}",
                fix=f"write lines like {_JSONL_EXAMPLE}",
            )
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _jsonl_record(obj: Any, lineno: int, where: str, column: str) -> Record:
    if not isinstance(obj, dict):
        raise CorruptFileError(
            f"{where}: expected a JSON object, got {type(obj).__name__}", fix=f"write lines like {_JSONL_EXAMPLE}"
        )
    rid = str(obj["id"]) if obj.get("id") is not None else f"line-{lineno}"
    if "messages" in obj and column not in obj:
        meta = {k: v for k, v in obj.items() if k not in ("id", "messages")}
        return Conversation(rid, _messages(obj["messages"], where), meta)
    prompt = obj.get(column)
    if not isinstance(prompt, str) or not prompt.strip():
        found = ", ".join(sorted(obj)) or "none"
        raise CorruptFileError(
            f"{where}: no non-empty string field {column!r} (fields: {found})",
            fix=f"add a {column!r} field to every line, or pass --column with the field that holds the prompt",
        )
    meta = {k: v for k, v in obj.items() if k not in ("id", column)}
    return Instruction(rid, prompt, meta)


def _check_new_id(seen: dict[str, str], rid: str, where: str) -> None:
    if rid in seen:
        raise CorruptFileError(f"{where}: id {rid!r} was already used at {seen[rid]}", fix="give every row a unique id")
    seen[rid] = where


def _read_jsonl(path: Path, column: str) -> list[Record]:
    records: list[Record] = []
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptFileError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno})",
                    fix=f"each line must be one complete JSON object, e.g. {_JSONL_EXAMPLE}",
                ) from None
            record = _jsonl_record(obj, lineno, where, column)
            if records and type(record) is not type(records[0]):
                raise CorruptFileError(
                    f"{where}: mixes 'messages' lines and {column!r} lines", fix="use one kind of line per file"
                )
            _check_new_id(seen, record.id, where)
            records.append(record)
    return records


def _read_csv(path: Path, column: str) -> list[Record]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if column not in header:
            raise ConfigError(
                f"{path} has no column {column!r} (columns: {', '.join(header) or 'none'})",
                fix="pass --column NAME (column='NAME' in Python) with the column that holds the prompt",
            )
        records: list[Record] = []
        seen: dict[str, str] = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise CorruptFileError(
                    f"{where}: more fields than the header has", fix="quote fields that contain commas"
                )
            prompt = row[column]
            if prompt is None or not prompt.strip():
                raise CorruptFileError(f"{where}: column {column!r} is empty", fix="fill it in or delete the row")
            rid = row.get("id") or f"line-{reader.line_num}"
            meta = {k: v for k, v in row.items() if k not in ("id", column)}
            _check_new_id(seen, rid, where)
            records.append(Instruction(rid, prompt, meta))
    return records


def load_user_file(scheme: str, path: str, *, column: str = "prompt") -> tuple[list[Record], DatasetInfo]:
    """Parse a user's ``jsonl`` or ``csv`` file into records plus a :class:`DatasetInfo`.

    Args:
        scheme: ``"jsonl"`` or ``"csv"``.
        path: the file.
        column: the field (JSONL) or column (CSV) holding the prompt.

    Returns:
        The records (instructions, or conversations for JSONL ``messages`` lines) and their info.

    Example:
        >>> records, info = load_user_file("csv", "prompts.csv", column="text")  # doctest: +SKIP
    """
    if scheme not in USER_SCHEMES:
        raise ConfigError(f"unknown file scheme {scheme!r}", fix="use jsonl:PATH or csv:PATH")
    resolved = _resolve(path)
    try:
        records = _read_jsonl(resolved, column) if scheme == "jsonl" else _read_csv(resolved, column)
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{resolved} is not UTF-8 text ({exc.reason})", fix="save the file as UTF-8") from None
    except csv.Error as exc:
        raise CorruptFileError(
            f"{resolved} is not valid CSV ({exc})", fix="check quoting, or export the file again"
        ) from None
    kind = "conversation" if records and isinstance(records[0], Conversation) else "instruction"
    info = DatasetInfo(
        f"{scheme}:{path}", kind, len(records), "user-provided", str(resolved.resolve()), f"your {scheme.upper()} file"
    )
    return records, info


__all__ = ["USER_SCHEMES", "load_user_file"]
