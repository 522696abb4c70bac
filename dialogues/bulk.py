"""The Store's bulk side (a mixin of `Store`): imported conversations, merged sessions, full dumps.

Each of these runs on the store's writer thread inside the import's one transaction (see
`Store.transaction`); rows are checked the way the app's own writes are (known columns, the
enumerated values), and the schema's CHECK constraints stand behind that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from limachat.dialogues.values import ENUMS, RANKER, check_text, now, to_json

TABLES = ("sessions", "turns", "ratings", "edits", "verdicts", "conversation_verdicts")
FILLED = {"ratings": ("current",), "verdicts": ("current",), "conversation_verdicts": ("current",)}  # the merge's


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:26]


def _imported_turn(session_id: str, index: int) -> str:
    """The id of an imported conversation's turn `index` (from 0): derived, so a re-import adds nothing."""
    return digest(session_id, str(index))


def _turn(tid: str, sid: str, parent: str | None, lane: str | None, exchange: int, role: str, text: str, created: str):
    """An imported turn: finished, answered by no checkpoint of ours."""
    return {
        "id": tid,
        "session_id": sid,
        "parent_id": parent,
        "lane": lane,
        "exchange": exchange,
        "role": role,
        "content": text,
        "checkpoint": None,
        "status": "ok",
        "created": created,
    }


class Bulk:
    def _columns(self, table: str) -> set[str]:
        return set(self._schema(table))

    def _schema(self, table: str) -> dict[str, bool]:
        """column -> whether a row must give it (a key, or NOT NULL without a default), read from the schema."""
        cache = self.__dict__.setdefault("_column_cache", {})
        if table not in cache:
            cache[table] = {
                name: bool(pk) or (bool(notnull) and default is None)
                for _, name, _, notnull, default, pk in self.db.execute(f"PRAGMA table_info({table})")
            }
        return cache[table]

    def _valid_row(self, table: str, obj: Any, what: str) -> dict[str, Any]:
        """A row of an imported session, as the app would have written it; else ValueError saying what."""
        if not isinstance(obj, dict):
            raise ValueError(f"{what} must be an object")
        unknown = sorted(set(obj) - self._columns(table) - {"owner"})
        if unknown:
            raise ValueError(f"{what} has unknown field {unknown[0]!r}")
        for column, required in self._schema(table).items():
            if required and obj.get(column) is None and column not in FILLED.get(table, ()):
                raise ValueError(f'{what} has no "{column}"' + (" (null)" if column in obj else ""))
        for column, value in obj.items():
            if isinstance(value, str):
                check_text(value, f"{what}.{column}")
        for column, allowed in ENUMS.get(table, {}).items():
            value = obj.get(column)
            if value is not None and value not in allowed:
                raise ValueError(f"{what}: {column} must be one of {', '.join(allowed)}, not {value!r}")
        return {k: to_json(k, v) for k, v in obj.items() if k != "owner"}

    def import_conversation(
        self, pairs: list[tuple[str, str]], meta: dict[str, Any], fmt: str, file: str, line: int
    ) -> int | None:
        """One conversation as an `imported` session, its id derived from its content; None when it is
        already there, else the number of turns added. Call inside `transaction`."""
        db = self.db
        sid = self._conversation_id(pairs, meta, fmt)
        if db["sessions"].count_where("id = ?", [sid]):
            return None
        created, meta = now(), {**meta, "file": file, "line": line}
        db["sessions"].insert(
            {
                "id": sid,
                "created": created,
                "mode": "imported",
                "prompt_set": file,
                "meta": to_json("meta", meta),
                "notes": None,
                "annotator": None,
                "prompt": None,
                "closed": None,
            }
        )
        parent, rows = None, []
        for i, (role, text) in enumerate(pairs):
            tid = _imported_turn(sid, i)
            rows.append(_turn(tid, sid, parent, None, i // 2 + 1, role, text, created))
            parent = tid
        db["turns"].insert_all(rows)
        return len(rows)

    @staticmethod
    def _conversation_id(pairs: list[tuple[str, str]], meta: dict[str, Any], fmt: str) -> str:
        return digest(fmt, json.dumps(pairs), json.dumps(meta, sort_keys=True))

    def conversation_leaf(self, pairs: list[tuple[str, str]], meta: dict[str, Any], fmt: str) -> str:
        """The last turn's id of the conversation `import_conversation` makes of these (ids are content's)."""
        return _imported_turn(self._conversation_id(pairs, meta, fmt), len(pairs) - 1)

    def import_tree(
        self, fmt: str, tree: str, nodes: list[dict[str, Any]], meta: dict[str, Any], file: str, line: int
    ) -> int | None:
        """A message tree (OpenAssistant's) as one `imported` session whose siblings stay siblings; nodes
        come parents first, each {key, parent, role, text, rank}. Ranks among siblings (0 is best) become
        the ratings of annotator `oasst-ranking`: the best excellent, the worst fail, any between pass (a
        lone ranked reply is not rated: a rank says nothing alone). None when the tree is already there."""
        db = self.db
        sid = digest(fmt, tree)
        if db["sessions"].count_where("id = ?", [sid]):
            return None
        created = now()
        start = datetime.fromisoformat(created)
        db["sessions"].insert(
            {
                "id": sid,
                "created": created,
                "mode": "imported",
                "prompt_set": file,
                "meta": to_json("meta", {**meta, "file": file, "line": line}),
            }
        )
        depth: dict[str | None, int] = {None: -1}
        rows, ranked = [], {}
        for node in nodes:
            depth[node["key"]] = depth[node["parent"]] + 1
            tid = digest(sid, node["key"])
            parent = digest(sid, node["parent"]) if node["parent"] else None
            at = (start + timedelta(microseconds=len(rows))).isoformat()  # siblings keep their order
            rows.append(_turn(tid, sid, parent, None, depth[node["key"]] // 2 + 1, node["role"], node["text"], at))
            if node["rank"] is not None and node["role"] == "assistant":
                ranked.setdefault(node["parent"], []).append((node["rank"], tid))
        db["turns"].insert_all(rows)
        ratings = []
        for siblings in ranked.values():
            if len(siblings) < 2:
                continue
            siblings.sort()
            for i, (_, tid) in enumerate(siblings):
                label = "excellent" if i == 0 else "fail" if i == len(siblings) - 1 else "pass"
                ratings.append(
                    {
                        "id": digest(tid, RANKER),
                        "turn_id": tid,
                        "annotator": RANKER,
                        "label": label,
                        "comment": f"rank {siblings[i][0]} of {len(siblings)}",
                        "created": created,
                        "current": 1,
                    }
                )
        db["ratings"].insert_all(ratings)
        return len(rows)

    def import_pair(
        self,
        pairs: list[tuple[str, str]],
        meta: dict[str, Any],
        chosen: str,
        rejected: str,
        annotator: str,
        file: str,
        line: int,
    ) -> int | None:
        """A preference row as a compare-shaped session: the prompt on both lanes, the chosen reply on
        lane a, the rejected one on lane b, and the verdict "a" by `annotator` (the row's first, else
        "imported"). None when it is already there, else the turns added."""
        db = self.db
        sid = digest("preference", json.dumps(pairs), chosen, rejected, json.dumps(meta, sort_keys=True))
        if db["sessions"].count_where("id = ?", [sid]):
            return None
        created = now()
        db["sessions"].insert(
            {
                "id": sid,
                "created": created,
                "mode": "compare",
                "prompt_set": file,
                "annotator": annotator,
                "meta": to_json(
                    "meta", {**meta, "file": file, "line": line, "lanes": {"a": "chosen", "b": "rejected"}}
                ),
            }
        )
        rows, last = [], {}
        for lane, reply in (("a", chosen), ("b", rejected)):
            parent = None
            for i, (role, text) in enumerate([*pairs, ("assistant", reply)]):
                tid = digest(sid, lane, str(i))
                rows.append(_turn(tid, sid, parent, lane, i // 2 + 1, role, text, created))
                parent = tid
            last[lane] = parent
        db["turns"].insert_all(rows)
        db["verdicts"].insert(
            {
                "id": digest(sid, "verdict"),
                "session_id": sid,
                "turn_a": last["a"],
                "turn_b": last["b"],
                "checkpoint_a": None,
                "checkpoint_b": None,
                "verdict": "a",
                "annotator": annotator,
                "created": created,
                "current": 1,
            }
        )
        return len(rows)

    def merge_session(self, record: dict[str, Any]) -> tuple[bool, int]:
        """Insert what is missing of one exported session (rows already present stay as they are).
        Returns (was the session there already, turns added). Call inside `transaction`."""
        db = self.db
        session = self._valid_row("sessions", record.get("session"), '"session"')
        if "id" not in session:
            raise ValueError('"session" must be an object with an "id"')
        parts = {}
        for table in TABLES[1:]:
            rows = record.get(table, [])
            if not isinstance(rows, list):
                raise ValueError(f'"{table}" must be a list')
            parts[table] = [self._valid_row(table, r, f"{table}[{i}]") for i, r in enumerate(rows)]
        _check_references(db, session["id"], parts)
        machines = record.get("annotators", [])
        if not isinstance(machines, list):
            raise ValueError('"annotators" must be a list')
        machines = [self._valid_row("annotators", r, f"annotators[{i}]") for i, r in enumerate(machines)]
        study = record.get("study")
        if study is not None:
            study = self._valid_row("studies", study, '"study"')
            if study.get("name") != session.get("study"):
                raise ValueError(
                    f'"study" names {study.get("name")!r} but the session belongs to {session.get("study")!r}'
                )
            db["studies"].insert(study, ignore=True)  # the study travels with its sessions
        present = db["sessions"].count_where("id = ?", [session["id"]]) > 0
        db["sessions"].insert(session, ignore=True)
        before = db["turns"].count
        db["turns"].insert_all(_parents_first(parts["turns"]), ignore=True)
        added = db["turns"].count - before
        db["annotators"].insert_all(machines, ignore=True)  # a judge stays a judge in the merged file
        for table in ("ratings", "edits", "verdicts", "conversation_verdicts"):
            rows = parts[table]
            if table != "edits":
                rows = [{**r, "current": 0} for r in rows]  # recomputed below: merged work may supersede ours
            db[table].insert_all(rows, ignore=True)
        turn_ids = [t["id"] for t in parts["turns"]]
        if turn_ids:
            self._recompute_current(turn_ids)
        db.execute(
            """update conversation_verdicts set current = (id = (select c.id from conversation_verdicts c
                 where c.session_id = conversation_verdicts.session_id and c.annotator = conversation_verdicts.annotator
                 order by c.created desc, c.id desc limit 1)) where session_id = ?""",
            (session["id"],),
        )
        return present, added

    def _recompute_current(self, turn_ids: list[str]) -> None:
        """The latest rating per (turn, annotator) and verdict per (pair, annotator) is the current one."""
        db, marks = self.db, ",".join("?" * len(turn_ids))
        db.execute(f"update ratings set current = 0 where turn_id in ({marks})", turn_ids)
        db.execute(
            f"""update ratings set current = 1 where id in (
            select id from (select id, row_number() over (partition by turn_id, annotator order by created desc, id desc) as n
                            from ratings where turn_id in ({marks})) where n = 1)""",
            turn_ids,
        )
        db.execute(f"update verdicts set current = 0 where turn_a in ({marks})", turn_ids)
        db.execute(
            f"""update verdicts set current = 1 where id in (
            select id from (select id, row_number() over (partition by turn_a, turn_b, annotator order by created desc, id desc) as n
                            from verdicts where turn_a in ({marks})) where n = 1)""",
            turn_ids,
        )

    def dump(self) -> Iterator[tuple[dict[str, Any], dict[str, list]]]:
        """(session, {turns, ratings (with history), edits, verdicts[, conversation_verdicts][, annotators][, study]})
        of every session,
        oldest first. `annotators`, when any, are the machines (judges, teachers) among the session's
        annotators; `study`, the study the session belongs to (its definition, so an import keeps the link).
        A teacher's edit leaves out its rubric (rubrics belong to the database, not to a session)."""
        machines = {r["name"]: r for r in self._query("select * from annotators order by name")}
        by_session: dict[str, dict[str, list]] = {}
        queries = {
            "turns": "select * from turns order by created, id",
            "ratings": "select r.*, t.session_id as _sid from ratings r join turns t on t.id = r.turn_id order by r.created, r.id",
            "edits": "select e.*, t.session_id as _sid from edits e join turns t on t.id = e.turn_id order by e.created, e.id",
            "verdicts": "select * from verdicts order by created, id",
        }
        for table, sql in queries.items():
            for row in self._query(sql):
                row.pop("owner", None)
                if table == "edits":
                    row["rubric_id"] = None
                sid = row.pop("_sid", None) or row["session_id"]
                by_session.setdefault(sid, {}).setdefault(table, []).append(row)
        whole: dict[str, list] = {}
        for row in self._query("select * from conversation_verdicts order by created, id"):
            whole.setdefault(row["session_id"], []).append(row)
        for session in self._query("select * from sessions order by created, id"):
            parts = by_session.get(session["id"], {})
            out = {t: parts.get(t, []) for t in queries}
            if session["id"] in whole:  # only where there are any: older backups stay byte for byte
                out["conversation_verdicts"] = whole[session["id"]]
            names = sorted({r["annotator"] for t in ("ratings", "edits", "verdicts") for r in out[t]} & set(machines))
            if names:
                out["annotators"] = [machines[n] for n in names]
            if session.get("study"):
                out["study"] = self.study_row(session["study"])
            yield session, out


def _check_references(db, session_id: str, parts: dict[str, list[dict[str, Any]]]) -> None:
    """Every turn a row points at is in the record or already stored, and a session's turns are its own."""
    ids = {t["id"] for t in parts["turns"]}

    def known(turn_id: str) -> bool:
        return turn_id in ids or db["turns"].count_where("id = ?", [turn_id]) > 0

    for i, t in enumerate(parts["turns"]):
        if t["session_id"] != session_id:
            raise ValueError(f"turns[{i}] belongs to session {t['session_id']!r}, not {session_id!r}")
        if t.get("parent_id") is not None and not known(t["parent_id"]):
            raise ValueError(f"turns[{i}]: its parent_id {t['parent_id']!r} is no turn of the record or the store")
    for i, row in enumerate(parts.get("conversation_verdicts", [])):
        if row["session_id"] != session_id:
            raise ValueError(f"conversation_verdicts[{i}] belongs to session {row['session_id']!r}, not {session_id!r}")
    for table, columns in (("ratings", ("turn_id",)), ("edits", ("turn_id",)), ("verdicts", ("turn_a", "turn_b"))):
        for i, row in enumerate(parts[table]):
            for column in columns:
                if not known(row[column]):
                    raise ValueError(f"{table}[{i}]: {column} {row[column]!r} is no turn of the record or the store")


def _parents_first(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns with every parent before its children: the foreign key on parent_id is checked
    per insert batch, and imported conversations share one creation time, so export order won't do."""
    ids = {t["id"] for t in turns}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for t in turns:
        children.setdefault(t.get("parent_id") if t.get("parent_id") in ids else None, []).append(t)
    out, todo = [], list(children.get(None, []))
    while todo:
        t = todo.pop()
        out.append(t)
        todo += children.get(t["id"], [])
    return out
