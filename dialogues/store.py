"""The one class that knows the database: sessions, the turn tree, ratings, gold edits, verdicts.

Writes run on one writer thread. A caller hands its write to a queue and waits for the result
(`store.rate(...)` in a thread; `await store.aio.rate(...)` on the event loop, which never runs a
SQLite call itself). Writes that queue up while one commits share the next transaction (group
commit), each in its own savepoint, so one write's error never undoes another's; a write is
acknowledged only once its transaction is committed. Reads run on the caller's thread (or, from
async code, on a small reader pool), each thread with its own connection. Other processes (a CLI
import beside the app) wait on WAL's busy timeout; past it, the write fails with one line.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import socket
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from limachat import procs
from limachat.dialogues.benches import Benches
from limachat.dialogues.bulk import Bulk
from limachat.dialogues.machines import Machines
from limachat.dialogues.migrations import migrations
from limachat.dialogues.reads import Reads
from limachat.dialogues.repeats import repeat_share
from limachat.dialogues.studies import Studies
from limachat.dialogues.team import Team
from limachat.dialogues.values import (  # noqa: F401 - re-exported: the store's public names
    ENUMS,
    INTERRUPTED,
    JSON_COLUMNS,
    JUDGE_VERDICTS,
    LABELS,
    LANES,
    MODES,
    RANK,
    ROLES,
    STATUSES,
    VERDICTS,
    StoreError,
    _check,
    _row,
    new_id,
    now,
    to_json,
)
from limachat.dialogues.writer import _not_on_loop, writes

BATCH = 256  # writes at most in one group commit


@functools.cache
def owner() -> str:
    """This process, as the streaming turns it owns name it: host, pid and start time (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{procs.started():.2f}"


def _alive(owner_id: str | None) -> bool:
    """Whether the process that owns a streaming turn still runs (on another host: assumed so)."""
    try:
        host, pid, started = (owner_id or "").rsplit(":", 2)
        return host != socket.gethostname() or procs.same(int(pid), float(started))
    except ValueError:
        return False


class _Async:
    """`await store.aio.NAME(...)`: a write is queued to the writer thread (when called) and awaited; a
    read runs on the reader pool. Either way the event loop never waits on SQLite."""

    def __init__(self, store: Store):
        self._store = store

    def __getattr__(self, name: str):
        store, attr = self._store, getattr(type(self._store), name)
        if hasattr(attr, "body"):

            def write(*args, **kwargs) -> asyncio.Future:
                # Queued at the call, not at the await; shielded: a write once queued is done, even when
                # the awaiting task is cancelled (a stop button) or never awaits it.
                return asyncio.shield(asyncio.wrap_future(store._submit(lambda: attr.body(store, *args, **kwargs))))

            return write

        async def read(*args, **kwargs):
            return await self.read(getattr(store, name), *args, **kwargs)

        return read

    async def read(self, fn: Callable, *args, **kwargs):
        """Any function of the store's reads (a view built from several of them), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._store._readers, functools.partial(fn, *args, **kwargs)
        )


class Store(Reads, Bulk, Machines, Studies, Team, Benches):
    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000, readers: int = 8):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a database file")
        # The file is only ever opened by SQLite (a file that is not a database is told by SQLITE_NOTADB).
        # Closing any other descriptor of it drops this process's POSIX locks; another process's last
        # connection then deletes the WAL under ours, which corrupts the file (sqlite.org/howtocorrupt.html 2.2).
        try:
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {self.path.parent}: {e.strerror}") from None
        # A home on a read-only disk (an archived study) is opened immutable: every read works, a write
        # is refused in one line. os.access answers EROFS for root too.
        self.readonly = not os.access(self.path.parent, os.W_OK) or (
            self.path.exists() and not os.access(self.path, os.W_OK)
        )
        if self.readonly and not self.path.exists():
            raise StoreError(f"{self.path}: no database, and {self.path.parent} cannot be written (a read-only disk?)")
        wal = self.path.with_name(self.path.name + "-wal")
        if self.readonly and wal.exists() and wal.stat().st_size:
            raise StoreError(
                f"{self.path} is on a read-only disk with writes still in {wal.name}; open it once where it can "
                "be written (limachat report does) so they are merged into the file"
            )
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self.commits = 0  # transactions the writer committed (each may hold many writes)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="limachat-store-read")
        self.aio = _Async(self)
        try:  # on this thread, before the writer starts: a database that needs nothing is only read
            self._migrate()
        except sqlite3.OperationalError as e:
            raise StoreError(
                f"{self.path}: {e}"
                + (" by another process; nothing was changed, try again" if "locked" in str(e) else "")
            ) from None
        except sqlite3.DatabaseError as e:
            if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise StoreError(
                    f"{self.path} is not a SQLite database (left as it is; set db or --home to another file)"
                ) from None
            raise StoreError(f"{self.path}: {e}") from None
        except ValueError as e:
            raise StoreError(f"{self.path}: {e}") from None
        finally:
            self.close_connection()
        self._writer = threading.Thread(target=self._write_loop, name="limachat-store-writer", daemon=True)
        self._writer.start()

    # -- connections and the writer --------------------------------------------------------------
    @property
    def db(self) -> Database:
        """This thread's connection (opened on first use, with WAL, busy timeout, foreign keys). Never
        on a thread running an event loop: async code goes through `store.aio`."""
        _not_on_loop()
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            if self.readonly:
                uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?immutable=1"
                db = Database(sqlite3.connect(uri, uri=True, isolation_level=None))
            else:
                db = Database(sqlite3.connect(self.path, isolation_level=None))
            db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a crash of this process
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _migrate(self) -> None:
        db = self.db
        if self.readonly:
            if "_sqlite_migrations" not in db.table_names() or migrations.pending(db):
                raise StoreError(
                    f"{self.path} needs a schema upgrade, which a read-only disk cannot take; copy the home "
                    "to a writable disk first"
                )
            return
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
        if "_sqlite_migrations" in db.table_names() and not migrations.pending(db):
            return
        db.execute("PRAGMA foreign_keys=OFF")  # a migration that rebuilds a table checks the keys itself
        try:
            migrations.apply(db)
        finally:
            db.execute("PRAGMA foreign_keys=ON")

    def _submit(self, fn: Callable[[], Any]) -> Future:
        if self.readonly:
            raise StoreError(f"{self.path} is on a read-only disk: it can be read (report, export), not written")
        if not getattr(self, "_writer", None) or not self._writer.is_alive():
            raise StoreError(f"{self.path} is closed")
        future: Future = Future()
        self._queue.put((fn, future))
        return future

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not None and len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            work = [item for item in batch if item is not None]
            if work:
                self._commit(work)
            if stop:
                self.close_connection()
                return

    def _commit(self, work: list[tuple[Callable, Future]]) -> None:
        """Run the queued writes in one transaction, each in its own savepoint; acknowledge after COMMIT."""
        work = [(fn, future) for fn, future in work if future.set_running_or_notify_cancel()]
        while work:
            work = self._transaction(work)

    def _transaction(self, work: list[tuple[Callable, Future]]) -> list[tuple[Callable, Future]]:
        """One transaction over `work`; returns the writes to run again (in a fresh one) when a write's
        error ended this one: that write alone fails."""
        db = self.db.conn
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            return self._fail(work, e)
        done = []
        for i, (fn, future) in enumerate(work):
            db.execute("SAVEPOINT write")
            try:
                done.append((fn, future, fn(), None))
                db.execute("RELEASE write")
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                if not db.in_transaction:  # the error ended the whole transaction, the others' writes with it
                    future.set_exception(self._error(e))
                    for _, fut, _, err in done:
                        if err is not None:
                            fut.set_exception(err)
                    return [(f, fut) for f, fut, _, err in done if err is None] + work[i + 1 :]
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
                done.append((fn, future, None, e))
        try:
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return self._fail([(fn, future) for fn, future, _, _ in done], e)
        for _, future, result, error in done:
            future.set_exception(error) if error is not None else future.set_result(result)
        return []

    def _error(self, error: BaseException) -> BaseException:
        """A database failure as the one line a user gets; a write's own error as it is."""
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return StoreError(
                f"{self.path} is locked by another process (waited {self.busy_timeout_ms / 1000:.0f} s); "
                "nothing was written, try again"
            )
        if isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.IntegrityError):
            return StoreError(f"{self.path}: {error}; nothing was written")
        return error

    def _fail(self, work: list[tuple[Callable, Future]], error: BaseException) -> list:
        error = self._error(error)
        for _, future in work:
            future.set_exception(error)
        return []

    def transaction(self, fn: Callable[[Database], Any]) -> Any:
        """Several writes as one (an import): `fn(db)` runs on the writer thread in one transaction."""
        return writes(lambda self: fn(self.db))(self)

    def close_connection(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def close(self) -> None:
        """Finish the queued writes, then stop the writer and the readers."""
        if getattr(self, "_writer", None) and self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        self._readers.shutdown(wait=True)
        self.close_connection()

    # -- raw access, inside this module only -----------------------------------------------------
    @staticmethod
    def _insert(db: Database, table: str, record: dict[str, Any]) -> None:
        # The hot writes are plain parameterised statements: sqlite-utils' Table.insert/update re-read
        # the schema on every call (about 6 statements per update). Bulk writes use sqlite-utils.
        cols = ", ".join(record)
        db.execute(f"insert into {table} ({cols}) values ({', '.join('?' * len(record))})", list(record.values()))

    @staticmethod
    def _update(db: Database, table: str, row_id: str, fields: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        if db.execute(f"update {table} set {sets} where id = ?", [*fields.values(), row_id]).rowcount != 1:
            raise StoreError(f"no {table[:-1]} {row_id!r}")

    def _query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        return [_row(r) for r in self.db.query(sql, params)]

    def _tuples(self, sql: str, params: tuple | dict = ()) -> list[tuple]:
        """Plain rows for bulk reads (report, export): a dict per row costs more than the query."""
        return self.db.execute(sql, params).fetchall()

    # -- sessions ---------------------------------------------------------------------------------
    @writes
    def start_session(
        self,
        mode: str = "chat",
        *,
        annotator: str | None = None,
        prompt_set: str | None = None,
        prompt: str | None = None,
        notes: str | None = None,
        meta: dict | None = None,
        study: str | None = None,
        slot: int | None = None,
    ) -> str:
        """A new session; in a study (`study`, at `slot` of the annotator's plan) or not."""
        sid = new_id()
        if study is not None and not self.db.execute("select 1 from studies where name = ?", (study,)).fetchone():
            raise StoreError(f"no study {study!r}")
        self._insert(
            self.db,
            "sessions",
            {
                "id": sid,
                "created": now(),
                "mode": _check(mode, MODES, "mode"),
                "prompt_set": prompt_set,
                "prompt": prompt,
                "annotator": annotator,
                "notes": notes,
                "meta": to_json("meta", meta),
                "closed": None,
                "study": study,
                "slot": slot,
            },
        )
        return sid

    @writes
    def update_session(self, session_id: str, **fields: Any) -> None:
        allowed = {"notes", "annotator", "meta", "closed"}
        if not set(fields) <= allowed:
            raise StoreError(f"cannot change {', '.join(sorted(set(fields) - allowed))} of a session")
        self._update(self.db, "sessions", session_id, {k: to_json(k, v) for k, v in fields.items()})

    def close_session(self, session_id: str) -> None:
        self.update_session(session_id, closed=now())

    # -- turns --------------------------------------------------------------------------------------
    def _turn_brief(self, turn_id: str) -> tuple[str, str, int]:
        """(session_id, role, exchange): the checks on every write, without building a dict."""
        row = self.db.execute("select session_id, role, exchange from turns where id = ?", (turn_id,)).fetchone()
        if row is None:
            raise StoreError(f"no turn {turn_id!r}")
        return row

    def _insert_turn(
        self, session_id: str, parent_id: str | None, role: str, content: str, lane: str | None, **fields: Any
    ) -> str:
        if lane is not None:
            _check(lane, LANES, "lane")
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
        record = {
            "id": tid,
            "session_id": session_id,
            "parent_id": parent_id,
            "lane": lane,
            "exchange": exchange,
            "role": role,
            "content": content,
            "created": now(),
            **fields,
        }
        self._insert(self.db, "turns", {k: to_json(k, v) for k, v in record.items()})
        return tid

    @writes
    def add_user_turn(
        self, session_id: str, content: str, parent_id: str | None = None, lane: str | None = None
    ) -> str:
        """Saved before any model call, so a failing model never loses what the user wrote."""
        if not content.strip():
            raise StoreError("a user turn needs some text")
        return self._insert_turn(session_id, parent_id, "user", content, lane, status="ok")

    @writes
    def begin_assistant_turn(
        self,
        session_id: str,
        parent_id: str,
        *,
        checkpoint: str,
        model: str | None = None,
        endpoint: str | None = None,
        params: dict | None = None,
        lane: str | None = None,
        preset: str | None = None,
        omitted: list[str] | None = None,
    ) -> str:
        """`params` are the sampling fields as sent; `omitted` the preset's keys the endpoint was not sent.
        The turn is owned by this process until it is finished (see repair_interrupted)."""
        return self._insert_turn(
            session_id,
            parent_id,
            "assistant",
            "",
            lane,
            status="streaming",
            checkpoint=checkpoint,
            model=model,
            endpoint=endpoint,
            params=params or {},
            preset=preset,
            omitted=omitted or None,
            owner=owner(),
        )

    @writes
    def save_partial(self, turn_id: str, text: str) -> None:
        """The text streamed so far (called as it arrives: a crash loses only what is in flight)."""
        self._update(self.db, "turns", turn_id, {"content": text})

    @writes
    def finish_assistant_turn(
        self,
        turn_id: str,
        content: str,
        *,
        status: str = "ok",
        error: str | None = None,
        error_detail: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        ttft: float | None = None,
        latency: float | None = None,
        params: dict | None = None,
    ) -> None:
        """`error` names no checkpoint, model or endpoint (a blind page shows it); `error_detail` may.
        `params` replaces the request parameters saved at the start (when the request changed on the way)."""
        _check(status, STATUSES[1:], "status")
        fields = {
            "content": content,
            "status": status,
            "error": error,
            "error_detail": error_detail,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "ttft": ttft,
            "latency": latency,
            "owner": None,
        }
        if status == "ok":  # does it give back an earlier reply of its branch? (limachat.dialogues.repeats)
            fields["repeat"] = repeat_share(content, self._earlier_replies(turn_id))
        if params is not None:
            fields["params"] = to_json("params", params)
        self._update(self.db, "turns", turn_id, fields)

    def _earlier_replies(self, turn_id: str) -> list[str]:
        """The finished replies above `turn_id` on its branch."""
        return [
            r[0]
            for r in self.db.execute(
                """with recursive up(id, parent_id) as (
                 select id, parent_id from turns where id = (select parent_id from turns where id = ?)
                 union all select t.id, t.parent_id from turns t join up on t.id = up.parent_id)
               select content from up join turns using (id) where role = 'assistant' and status = 'ok'""",
                (turn_id,),
            )
        ]

    @writes
    def set_fluency(self, turn_id: str, value: float) -> None:
        self._update(self.db, "turns", turn_id, {"fluency": value})

    @writes
    def repair_interrupted(self) -> int:
        """Replies left `streaming` by a process that is gone (a crash, a kill) become errors that keep
        their partial text; the page offers retry on them. Returns how many."""
        dead = [
            tid
            for tid, who in self.db.execute("select id, owner from turns where status = 'streaming'")
            if not _alive(who)
        ]
        for tid in dead:
            self._update(self.db, "turns", tid, {"status": "error", "error": INTERRUPTED, "owner": None})
        return len(dead)

    # -- ratings, gold edits, verdicts ---------------------------------------------------------------
    @writes
    def rate(self, turn_id: str, annotator: str, label: str, comment: str | None = None) -> str:
        """The annotator's current label for the turn; the one it replaces stays in history."""
        _check(label, LABELS, "label")
        if not annotator:
            raise StoreError("a rating needs an annotator")
        if self._turn_brief(turn_id)[1] != "assistant":
            raise StoreError("only assistant turns are rated")
        db = self.db
        same = db.execute(
            "select id from ratings where turn_id = ? and annotator = ? and current = 1 and label = ?",
            (turn_id, annotator, label),
        ).fetchone()
        if same:  # the same label again (a double click) is not a new rating
            return same[0]
        rid = new_id()
        db.execute(
            "update ratings set current = 0 where turn_id = ? and annotator = ? and current = 1", (turn_id, annotator)
        )
        self._insert(
            db,
            "ratings",
            {
                "id": rid,
                "turn_id": turn_id,
                "annotator": annotator,
                "label": label,
                "comment": comment,
                "created": now(),
                "current": 1,
            },
        )
        return rid

    @writes
    def edit(self, turn_id: str, annotator: str, content: str) -> str:
        """A gold correction of an assistant turn, kept beside the original."""
        if self._turn_brief(turn_id)[1] != "assistant":
            raise StoreError("gold edits correct assistant turns")
        if not content.strip() or not annotator:
            raise StoreError("a gold edit needs text and an annotator")
        eid = new_id()
        self._insert(
            self.db,
            "edits",
            {"id": eid, "turn_id": turn_id, "annotator": annotator, "content": content, "created": now()},
        )
        return eid

    @writes
    def verdict(self, session_id: str, turn_a: str, turn_b: str, verdict: str, annotator: str) -> str:
        """Compare mode: which of two assistant turns answering the same prompt was better."""
        _check(verdict, JUDGE_VERDICTS if self.kind_of(annotator) == "judge" else VERDICTS, "verdict")
        a, b = self.turn(turn_a), self.turn(turn_b)
        if (
            not (a["session_id"] == b["session_id"] == session_id)
            or a["role"] != "assistant"
            or b["role"] != "assistant"
        ):
            raise StoreError("a verdict compares two assistant turns of the same session")
        db = self.db
        vid = new_id()
        db.execute(
            "update verdicts set current = 0 where turn_a = ? and turn_b = ? and annotator = ? and current = 1",
            (turn_a, turn_b, annotator),
        )
        self._insert(
            db,
            "verdicts",
            {
                "id": vid,
                "session_id": session_id,
                "turn_a": turn_a,
                "turn_b": turn_b,
                "checkpoint_a": a["checkpoint"],
                "checkpoint_b": b["checkpoint"],
                "verdict": verdict,
                "annotator": annotator,
                "created": now(),
                "current": 1,
            },
        )
        return vid
