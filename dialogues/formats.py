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

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limachat.dialogues.store import Store, now, to_json

SESSION_FORMAT = "limachat.session/1"
FORMATS = ("lima", "messages", "sharegpt", "sessions")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "model": "assistant", "system": "system"}


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


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:26]


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
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
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
            raise ValueError(f"turn {i + 1} is {role!r} where {expected!r} belongs (turns alternate, starting with the user)")
        if not text.strip():
            raise ValueError(f"turn {i + 1} is empty")
    return pairs, meta


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield number, None, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(record, dict):
                yield number, None, "each line must be a JSON object"
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
    report = ImportReport(format=fmt or "?")
    with store.write() as db:
        for number, record, problem in jsonl_records(path):
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
                            if line_fmt == "sessions":
                                _merge_session(db, record, report)
                            else:
                                _add_conversation(db, record, line_fmt, path, number, report)
                    except (ValueError, KeyError, TypeError, sqlite3.IntegrityError) as e:
                        problem = str(e) if not isinstance(e, KeyError) else f"missing field {e}"
            if problem is not None:
                if not skip_bad:
                    raise FormatError(f"{where}: {problem}")
                report.bad.append(f"{where}: {problem}")
    return report


def _add_conversation(db, record: dict, fmt: str, path: Path, number: int, report: ImportReport) -> None:
    pairs, meta = conversation_pairs(record, fmt)
    sid = _digest(fmt, json.dumps(pairs), json.dumps(meta, sort_keys=True))
    if db["sessions"].count_where("id = ?", [sid]):
        report.sessions_present += 1
        return
    if pairs[-1][0] == "user":
        report.warnings.append(f"{path}:{number}: ends with a user turn (kept; it has no answer to train on)")
    created = now()
    meta = {**meta, "file": path.name, "line": number}
    db["sessions"].insert({"id": sid, "created": created, "mode": "imported", "prompt_set": path.name,
                           "meta": to_json("meta", meta), "notes": None, "annotator": None, "prompt": None, "closed": None})
    parent = None
    rows = []
    for i, (role, text) in enumerate(pairs):
        tid = _digest(sid, str(i))
        rows.append({"id": tid, "session_id": sid, "parent_id": parent, "lane": None, "exchange": i // 2 + 1,
                     "role": role, "content": text, "checkpoint": None, "status": "ok", "created": created})
        parent = tid
    db["turns"].insert_all(rows)
    report.sessions_added += 1
    report.turns_added += len(rows)


def _merge_session(db, record: dict, report: ImportReport) -> None:
    """Insert what is missing of one exported session; rows already present are left as they are."""
    session = record["session"]
    if not isinstance(session, dict) or "id" not in session:
        raise ValueError('"session" must be an object with an "id"')
    present = db["sessions"].count_where("id = ?", [session["id"]]) > 0
    db["sessions"].insert(_to_row(session), ignore=True)
    before = db["turns"].count
    db["turns"].insert_all((_to_row(t) for t in _parents_first(record.get("turns", []))), ignore=True)
    report.turns_added += db["turns"].count - before
    for table in ("ratings", "edits", "verdicts"):
        rows = [_to_row(r) for r in record.get(table, [])]
        if table in ("ratings", "verdicts"):
            rows = [{**r, "current": 0} for r in rows]  # recomputed below: merged work may supersede ours
        db[table].insert_all(rows, ignore=True)
    turn_ids = [t["id"] for t in record.get("turns", [])]
    if turn_ids:
        _recompute_current(db, turn_ids)
    if present:
        report.sessions_present += 1
    else:
        report.sessions_added += 1


def _parents_first(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns with every parent before its children: the foreign key on parent_id is checked
    per insert batch, and imported conversations share one creation time, so export order won't do."""
    ids = {t["id"] for t in turns}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for t in turns:
        children.setdefault(t["parent_id"] if t["parent_id"] in ids else None, []).append(t)
    out, todo = [], list(children.get(None, []))
    while todo:
        t = todo.pop()
        out.append(t)
        todo += children.get(t["id"], [])
    return out


def _recompute_current(db, turn_ids: list[str]) -> None:
    """The latest rating per (turn, annotator) and verdict per (pair, annotator) is the current one."""
    marks = ",".join("?" * len(turn_ids))
    db.execute(f"update ratings set current = 0 where turn_id in ({marks})", turn_ids)
    db.execute(f"""update ratings set current = 1 where id in (
        select id from (select id, row_number() over (partition by turn_id, annotator order by created desc, id desc) as n
                        from ratings where turn_id in ({marks})) where n = 1)""", turn_ids)
    db.execute(f"update verdicts set current = 0 where turn_a in ({marks})", turn_ids)
    db.execute(f"""update verdicts set current = 1 where id in (
        select id from (select id, row_number() over (partition by turn_a, turn_b, annotator order by created desc, id desc) as n
                        from verdicts where turn_a in ({marks})) where n = 1)""", turn_ids)


def _to_row(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: to_json(k, v) for k, v in obj.items()}


def session_records(store: Store) -> Iterator[dict[str, Any]]:
    """Each session with its whole turn tree, ratings (with history), gold edits and verdicts."""
    by_session: dict[str, dict[str, list]] = {}
    queries = {"turns": "select * from turns order by created, id",
               "ratings": "select r.*, t.session_id as _sid from ratings r join turns t on t.id = r.turn_id order by r.created, r.id",
               "edits": "select e.*, t.session_id as _sid from edits e join turns t on t.id = e.turn_id order by e.created, e.id",
               "verdicts": "select * from verdicts order by created, id"}
    for table, sql in queries.items():
        for row in store.query(sql):
            sid = row.pop("_sid", None) or row["session_id"]
            by_session.setdefault(sid, {}).setdefault(table, []).append(row)
    for session in store.query("select * from sessions order by created, id"):
        parts = by_session.get(session["id"], {})
        yield {"format": SESSION_FORMAT, "session": session, **{t: parts.get(t, []) for t in queries}}


def load_prompts(path: Path) -> list[dict[str, str]]:
    """A prompt set: JSONL lines with "prompt" (and optional "id"), or plain text, one prompt a line."""
    path = Path(path)
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
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
