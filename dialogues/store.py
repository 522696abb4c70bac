"""The one class that touches the database: sessions, the turn tree, ratings, gold edits, verdicts.

Safe under Gradio's worker threads: every thread gets its own connection (sqlite3 objects must not
cross threads), and writes inside this process take one lock, so they queue in order instead of
sleeping in SQLite's busy handler. Other processes (a CLI import beside the app) wait on WAL's
busy timeout. Writes of several rows sit in one `db.atomic()` block; reads may use raw SQL.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from limachat.dialogues.migrations import migrations

MODES = ("chat", "compare", "blind", "imported")
LABELS = ("fail", "pass", "excellent")
RANK = {label: i for i, label in enumerate(LABELS)}  # a turn rated by several annotators takes the lowest
STATUSES = ("streaming", "ok", "error", "stopped")
VERDICTS = ("a", "b", "tie")
JSON_COLUMNS = {"params", "meta", "omitted"}


class StoreError(ValueError):
    """A request the store refuses (unknown id, bad label): one line saying what."""


def new_id() -> str:
    """Time-ordered (sorts by creation) and random (merges across machines): 26 hex characters."""
    return f"{time.time_ns():016x}{secrets.token_hex(5)}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def to_json(key: str, value: Any) -> Any:
    """JSON columns are stored with sorted keys, so an export re-imported exports byte for byte."""
    return json.dumps(value, sort_keys=True) if key in JSON_COLUMNS and value is not None and not isinstance(value, str) else value


def _row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: (json.loads(v) if k in JSON_COLUMNS and v is not None else v) for k, v in row.items()}


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise StoreError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


class FairLock:
    """A re-entrant lock handed to waiters in arrival order. threading.RLock lets a thread that
    just released it take it straight back, so under 64 writers some waited 100 ms and more."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[tuple[int, threading.Lock]] = deque()
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return
            if self._owner is None:
                self._owner, self._depth = me, 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append((me, gate))
        gate.acquire()  # released by the previous owner, who made us the owner

    def __exit__(self, *exc) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                self._owner, gate = self._waiters.popleft()
                self._depth = 1
                gate.release()
            else:
                self._owner = None


class Store:
    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._write_lock = FairLock()
        with self._write_lock:
            self.db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            migrations.apply(self.db)

    # -- connections ----------------------------------------------------------------------------
    @property
    def db(self) -> Database:
        """This thread's connection (opened on first use, with WAL, busy timeout, foreign keys)."""
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = Database(self.path)
            db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a crash of this process
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def write(self) -> Iterator[Database]:
        """One transaction, serialized with the other writers of this process."""
        with self._write_lock:
            db = self.db
            with db.atomic():
                yield db

    # The hot writes (every turn, every streamed chunk, every rating) are plain parameterised
    # statements: sqlite-utils' Table.update/insert re-read the schema and the row on every call
    # (about 6 statements per update), which tripled the time each write holds the lock (see
    # BENCHMARKS.md). Schema, migrations, imports and bulk writes go through sqlite-utils.
    @staticmethod
    def _insert(db: Database, table: str, record: dict[str, Any]) -> None:
        cols = ", ".join(record)
        db.execute(f"insert into {table} ({cols}) values ({', '.join('?' * len(record))})", list(record.values()))

    @staticmethod
    def _update(db: Database, table: str, row_id: str, fields: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        if db.execute(f"update {table} set {sets} where id = ?", [*fields.values(), row_id]).rowcount != 1:
            raise StoreError(f"no {table[:-1]} {row_id!r}")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        return [_row(r) for r in self.db.query(sql, params)]

    def tuples(self, sql: str, params: tuple | dict = ()) -> list[tuple]:
        """Plain rows for bulk reads (report, export): a dict per row costs more than the query."""
        return self.db.execute(sql, params).fetchall()

    # -- sessions ---------------------------------------------------------------------------------
    def start_session(self, mode: str = "chat", *, annotator: str | None = None, prompt_set: str | None = None,
                      prompt: str | None = None, notes: str | None = None, meta: dict | None = None) -> str:
        sid = new_id()
        record = {"id": sid, "created": now(), "mode": _check(mode, MODES, "mode"), "prompt_set": prompt_set,
                  "prompt": prompt, "annotator": annotator, "notes": notes,
                  "meta": to_json("meta", meta), "closed": None}
        with self.write() as db:
            self._insert(db, "sessions", record)
        return sid

    def session(self, session_id: str) -> dict[str, Any]:
        rows = self.query("select * from sessions where id = ?", (session_id,))
        if not rows:
            raise StoreError(f"no session {session_id!r}")
        return rows[0]

    def sessions(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first, with counts of turns and rated assistant turns."""
        return self.query(
            """select s.*, (select count(*) from turns t where t.session_id = s.id) as turns,
                      (select count(distinct r.turn_id) from ratings r join turns t on t.id = r.turn_id
                        where t.session_id = s.id and r.current = 1) as rated,
                      (select content from turns t where t.session_id = s.id and t.role = 'user'
                        order by t.created limit 1) as first_prompt
               from sessions s order by s.created desc limit ? offset ?""", (limit, offset))

    def update_session(self, session_id: str, **fields: Any) -> None:
        allowed = {"notes", "annotator", "meta", "closed"}
        if not set(fields) <= allowed:
            raise StoreError(f"cannot change {', '.join(sorted(set(fields) - allowed))} of a session")
        fields = {k: to_json(k, v) for k, v in fields.items()}
        with self.write() as db:
            self._update(db, "sessions", session_id, fields)

    def close_session(self, session_id: str) -> None:
        self.update_session(session_id, closed=now())

    # -- turns --------------------------------------------------------------------------------------
    def turn(self, turn_id: str) -> dict[str, Any]:
        rows = self.query("select * from turns where id = ?", (turn_id,))
        if not rows:
            raise StoreError(f"no turn {turn_id!r}")
        return rows[0]

    def _turn_brief(self, turn_id: str) -> tuple[str, str, int]:
        """(session_id, role, exchange): the checks on every write, without building a dict."""
        row = self.db.execute("select session_id, role, exchange from turns where id = ?", (turn_id,)).fetchone()
        if row is None:
            raise StoreError(f"no turn {turn_id!r}")
        return row

    def turns(self, session_id: str) -> list[dict[str, Any]]:
        """Every turn of a session, every branch, in creation order."""
        return self.query("select * from turns where session_id = ? order by created, id", (session_id,))

    def children(self, turn_id: str | None, session_id: str | None = None) -> list[dict[str, Any]]:
        if turn_id is None:
            return self.query("select * from turns where session_id = ? and parent_id is null order by created, id", (session_id,))
        return self.query("select * from turns where parent_id = ? order by created, id", (turn_id,))

    def _insert_turn(self, session_id: str, parent_id: str | None, role: str, content: str, lane: str | None,
                     **fields: Any) -> str:
        exchange = 1
        if parent_id is not None:
            parent = self._turn_brief(parent_id)
            if parent[0] != session_id:
                raise StoreError(f"turn {parent_id!r} belongs to another session")
            if parent[1] == role:
                raise StoreError(f"a {role} turn cannot follow a {role} turn")
            exchange = parent[2] + (role == "user")
        else:
            self.session(session_id)
            if role != "user":
                raise StoreError("a conversation starts with a user turn")
        tid = new_id()
        record = {"id": tid, "session_id": session_id, "parent_id": parent_id, "lane": lane, "exchange": exchange,
                  "role": role, "content": content, "created": now(), **fields}
        record = {k: to_json(k, v) for k, v in record.items()}
        with self.write() as db:
            self._insert(db, "turns", record)
        return tid

    def add_user_turn(self, session_id: str, content: str, parent_id: str | None = None, lane: str | None = None) -> str:
        """Saved before any model call, so a failing model never loses what the user wrote."""
        if not content.strip():
            raise StoreError("a user turn needs some text")
        return self._insert_turn(session_id, parent_id, "user", content, lane, status="ok")

    def begin_assistant_turn(self, session_id: str, parent_id: str, *, checkpoint: str, model: str | None = None,
                             endpoint: str | None = None, params: dict | None = None, lane: str | None = None,
                             preset: str | None = None, omitted: list[str] | None = None) -> str:
        """`params` are the sampling fields as sent; `omitted` the preset's keys the endpoint was not sent."""
        return self._insert_turn(session_id, parent_id, "assistant", "", lane, status="streaming", checkpoint=checkpoint,
                                 model=model, endpoint=endpoint, params=params or {}, preset=preset,
                                 omitted=omitted or None)

    def save_partial(self, turn_id: str, text: str) -> None:
        """The text streamed so far (called as it arrives: a crash loses only what is in flight)."""
        with self.write() as db:
            self._update(db, "turns", turn_id, {"content": text})

    def finish_assistant_turn(self, turn_id: str, content: str, *, status: str = "ok", error: str | None = None,
                              prompt_tokens: int | None = None, completion_tokens: int | None = None,
                              ttft: float | None = None, latency: float | None = None, params: dict | None = None) -> None:
        """`params` replaces the request parameters saved at the start (when the request changed on the way)."""
        _check(status, STATUSES[1:], "status")
        fields = {"content": content, "status": status, "error": error, "prompt_tokens": prompt_tokens,
                  "completion_tokens": completion_tokens, "ttft": ttft, "latency": latency}
        if params is not None:
            fields["params"] = to_json("params", params)
        with self.write() as db:
            self._update(db, "turns", turn_id, fields)

    def set_fluency(self, turn_id: str, value: float) -> None:
        with self.write() as db:
            self._update(db, "turns", turn_id, {"fluency": value})

    def branch(self, turn_id: str) -> list[dict[str, Any]]:
        """The turns from the root of the tree down to `turn_id`."""
        rows = self.query(
            """with recursive up(id, parent_id, depth) as (
                 select id, parent_id, 0 from turns where id = ?
                 union all select t.id, t.parent_id, up.depth + 1 from turns t join up on t.id = up.parent_id)
               select turns.* from up join turns on turns.id = up.id order by up.depth desc""", (turn_id,))
        if not rows:
            raise StoreError(f"no turn {turn_id!r}")
        return rows

    def messages(self, turn_id: str) -> list[dict[str, str]]:
        """The chat messages of a branch, for the next request. Failed or empty replies are left out,
        together with the user turn they answered, so a retry does not repeat the question."""
        out: list[dict[str, str]] = []
        for t in self.branch(turn_id):
            if t["role"] == "assistant" and (t["status"] == "error" or not t["content"]):
                if out and out[-1]["role"] == "user" and t["id"] != turn_id:
                    out.pop()
                continue
            out.append({"role": t["role"], "content": t["content"]})
        return out

    # -- ratings, gold edits, verdicts ---------------------------------------------------------------
    def rate(self, turn_id: str, annotator: str, label: str, comment: str | None = None) -> str:
        """The annotator's current label for the turn; the one it replaces stays in history."""
        _check(label, LABELS, "label")
        if not annotator:
            raise StoreError("a rating needs an annotator")
        if self._turn_brief(turn_id)[1] != "assistant":
            raise StoreError("only assistant turns are rated")
        rid = new_id()
        with self.write() as db:
            same = db.execute("select id from ratings where turn_id = ? and annotator = ? and current = 1 and label = ?",
                              (turn_id, annotator, label)).fetchone()
            if same:  # the same label again (a double click) is not a new rating
                return same[0]
            db.execute("update ratings set current = 0 where turn_id = ? and annotator = ? and current = 1", (turn_id, annotator))
            self._insert(db, "ratings", {"id": rid, "turn_id": turn_id, "annotator": annotator, "label": label,
                                         "comment": comment, "created": now(), "current": 1})
        return rid

    def ratings(self, turn_id: str, *, history: bool = False) -> list[dict[str, Any]]:
        where = "" if history else " and current = 1"
        return self.query(f"select * from ratings where turn_id = ?{where} order by created, id", (turn_id,))

    def current_labels(self, session_id: str, annotator: str | None = None) -> dict[str, str]:
        """turn id -> current label (of `annotator`, or the latest of anyone's) for one session."""
        rows = self.query(
            """select r.turn_id, r.label, r.annotator from ratings r join turns t on t.id = r.turn_id
               where t.session_id = ? and r.current = 1 order by r.created, r.id""", (session_id,))
        return {r["turn_id"]: r["label"] for r in rows if annotator is None or r["annotator"] == annotator}

    def edit(self, turn_id: str, annotator: str, content: str) -> str:
        """A gold correction of an assistant turn, kept beside the original."""
        if self.turn(turn_id)["role"] != "assistant":
            raise StoreError("gold edits correct assistant turns")
        if not content.strip() or not annotator:
            raise StoreError("a gold edit needs text and an annotator")
        eid = new_id()
        with self.write() as db:
            self._insert(db, "edits", {"id": eid, "turn_id": turn_id, "annotator": annotator, "content": content, "created": now()})
        return eid

    def gold(self, turn_id: str) -> str | None:
        rows = self.query("select content from edits where turn_id = ? order by created desc, id desc limit 1", (turn_id,))
        return rows[0]["content"] if rows else None

    def verdict(self, session_id: str, turn_a: str, turn_b: str, verdict: str, annotator: str) -> str:
        """Compare mode: which of two assistant turns answering the same prompt was better."""
        _check(verdict, VERDICTS, "verdict")
        a, b = self.turn(turn_a), self.turn(turn_b)
        if not (a["session_id"] == b["session_id"] == session_id) or a["role"] != "assistant" or b["role"] != "assistant":
            raise StoreError("a verdict compares two assistant turns of the same session")
        vid = new_id()
        with self.write() as db:
            db.execute("update verdicts set current = 0 where turn_a = ? and turn_b = ? and annotator = ? and current = 1",
                       (turn_a, turn_b, annotator))
            self._insert(db, "verdicts", {"id": vid, "session_id": session_id, "turn_a": turn_a, "turn_b": turn_b,
                                          "checkpoint_a": a["checkpoint"], "checkpoint_b": b["checkpoint"],
                                          "verdict": verdict, "annotator": annotator, "created": now(), "current": 1})
        return vid

    def verdicts(self, session_id: str) -> list[dict[str, Any]]:
        return self.query("select * from verdicts where session_id = ? and current = 1 order by created, id", (session_id,))
