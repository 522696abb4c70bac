"""Import of conversation files into the store, and the full-fidelity sessions format.

Formats (JSON Lines, one conversation per line):
- lima:     {"conversations": ["user", "assistant", ...], "source": "..."}  (LIMA's release)
- messages: {"messages": [{"role": "user", "content": "..."}, ...]}          (TRL / OpenAI)
- sharegpt: {"conversations": [{"from": "human", "value": "..."}, ...]}
- sessions: {"format": "limachat.session/1", "session": {...}, "turns": [...], ...}  (see README)

Imported conversations of the first three formats get ids derived from their content, so
importing the same file twice adds nothing; sessions keep their own ids and merge the same way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limachat.dialogues.store import Store

SESSION_FORMAT = "limachat.session/1"
FORMATS = ("lima", "messages", "sharegpt", "sessions")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}


class FormatError(ValueError):
    """`FILE:LINE: what is wrong`."""


@dataclass
class ImportReport:
    format: str
    sessions_added: int = 0
    sessions_present: int = 0  # already in the store: skipped (or merged, for the sessions format)
    turns_added: int = 0
    bad: list[str] = field(default_factory=list)  # "FILE:LINE: ..." for each skipped line
    warnings: list[str] = field(default_factory=list)  # e.g. conversations ending in a user turn

    def summary(self) -> str:
        parts = [f"{self.sessions_added} conversations added", f"{self.turns_added} turns"]
        if self.sessions_present:
            parts.append(f"{self.sessions_present} already present")
        if self.bad:
            parts.append(f"{len(self.bad)} bad lines skipped")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warnings")
        return f"{self.format}: " + ", ".join(parts)


def detect_format(record: dict[str, Any]) -> str | None:
    if record.get("format") == SESSION_FORMAT:
        return "sessions"
    if isinstance(record.get("messages"), list):
        return "messages"
    conv = record.get("conversations")
    if isinstance(conv, list) and conv:
        return "sharegpt" if isinstance(conv[0], dict) else "lima"
    return None


def conversation_pairs(record: dict[str, Any], fmt: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(role, text) pairs and session meta of one record; raises ValueError saying what is wrong."""
    meta: dict[str, Any] = {}
    if fmt == "lima":
        conv = record.get("conversations")
        if not isinstance(conv, list) or not all(isinstance(t, str) for t in conv):
            raise ValueError('"conversations" must be a list of strings')
        pairs = [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(conv)]
        if "source" in record:
            meta["source"] = record["source"]
    elif fmt == "messages":
        msgs = record.get("messages")
        if not isinstance(msgs, list):
            raise ValueError('"messages" must be a list')
        pairs = []
        for i, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("content"), str)
                or m.get("role") not in ("system", "user", "assistant")
            ):
                raise ValueError(f'message {i + 1} needs "role" (system, user or assistant) and string "content"')
            pairs.append((m["role"], m["content"]))
    else:
        conv = record.get("conversations")
        if not isinstance(conv, list):
            raise ValueError('"conversations" must be a list')
        pairs = []
        for i, m in enumerate(conv):
            role = SHAREGPT_ROLES.get(str(m.get("from", "")).lower()) if isinstance(m, dict) else None
            if role is None or not isinstance(m.get("value"), str):
                raise ValueError(f'turn {i + 1} needs "from" ({", ".join(SHAREGPT_ROLES)}) and string "value"')
            pairs.append((role, m["value"]))
    if pairs and pairs[0][0] == "system":
        meta["system"] = pairs.pop(0)[1]
    if not pairs:
        raise ValueError("the conversation is empty")
    for i, (role, text) in enumerate(pairs):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"turn {i + 1} is {role!r} where {expected!r} belongs (turns alternate, starting with the user)"
            )
        if not text.strip():
            raise ValueError(f"turn {i + 1} is empty")
    return pairs, meta


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, record or None, what is wrong or None) per non-blank line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    number,
                    None,
                    f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8",
                )
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                hint = (
                    "; this looks like one JSON document: JSON Lines has one object per line"
                    if line.strip() in ("[", "{")
                    else ""
                )
                yield number, None, f"not valid JSON ({e.msg} at column {e.colno}){hint}"
                continue
            if not isinstance(record, dict):
                hint = " (a JSON array? write one object per line)" if isinstance(record, list) else ""
                yield number, None, f"each line must be a JSON object{hint}"
                continue
            yield number, record, None


def import_file(store: Store, path: Path, fmt: str | None = None, *, skip_bad: bool = False) -> ImportReport:
    """Import a JSONL file. Without skip_bad the first bad line raises FormatError and nothing
    of the file is written; with it, bad lines are counted in the report and the rest goes in."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    if fmt is not None and fmt not in FORMATS:
        raise FormatError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    records = list(jsonl_records(path))  # read (and checked for UTF-8) before the database is touched
    if not records:
        raise FormatError(f"{path}: empty (no JSON lines)")
    report = ImportReport(format=fmt or "?")

    def run(db) -> None:
        for number, record, problem in records:
            where = f"{path}:{number}"
            if problem is None:
                line_fmt = fmt or detect_format(record)
                if fmt is None and report.format == "?":
                    report.format = line_fmt or "?"
                if line_fmt is None:
                    problem = 'not a known format (expected "conversations", "messages" or a limachat session)'
                else:
                    try:
                        with db.atomic():  # a savepoint: a line that fails half-way leaves nothing behind
                            _import_line(store, record, line_fmt, path, number, report)
                    except (ValueError, KeyError, TypeError, sqlite3.IntegrityError) as e:
                        problem = str(e) if not isinstance(e, KeyError) else f"missing field {e}"
            if problem is not None:
                if not skip_bad:
                    raise FormatError(f"{where}: {problem}")
                report.bad.append(f"{where}: {problem}")

    store.transaction(run)
    return report


def _import_line(store: Store, record: dict, fmt: str, path: Path, number: int, report: ImportReport) -> None:
    if fmt == "sessions":
        present, added = store.merge_session(record)
        report.turns_added += added
        report.sessions_present += present
        report.sessions_added += not present
        return
    pairs, meta = conversation_pairs(record, fmt)
    added = store.import_conversation(pairs, meta, fmt, path.name, number)
    if added is None:
        report.sessions_present += 1
        return
    if pairs[-1][0] == "user":
        report.warnings.append(f"{path}:{number}: ends with a user turn (kept; it has no answer to train on)")
    report.sessions_added += 1
    report.turns_added += added


def session_records(store: Store) -> Iterator[dict[str, Any]]:
    """Each session with its whole turn tree, ratings (with history), gold edits and verdicts."""
    for session, parts in store.dump():
        yield {"format": SESSION_FORMAT, "session": session, **parts}


def load_prompts(path: Path) -> list[dict[str, str]]:
    """A prompt set: JSONL lines with "prompt" (and optional "id"), or plain text, one prompt a line."""
    path = Path(path)
    prompts = []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: {e.strerror}") from None
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(
                f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            ) from None
        if "\x00" in line:
            raise FormatError(f"{path}:{number}: a NUL byte: this is not a text file")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("prompt"), str)
                or not record["prompt"].strip()
            ):
                raise FormatError(f'{path}:{number}: needs a "prompt" string')
            prompts.append({"id": str(record.get("id", f"p{len(prompts) + 1:02d}")), "prompt": record["prompt"]})
        else:
            prompts.append({"id": f"p{len(prompts) + 1:02d}", "prompt": line.strip()})
    if not prompts:
        raise FormatError(f"{path}: no prompts")
    return prompts


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line: stable key order, UTF-8 kept as is."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))
