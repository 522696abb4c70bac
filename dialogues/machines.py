"""The Store's curation side (a mixin of `Store`): judges and teachers beside the humans, rubrics,
named selections and the embedding cache. A machine's label is a rating and its pairwise verdict a
verdict, like a human's; `annotators` says which names are machines, so every read below can take
humans, machines or both (`raters`), and nothing mixes them silently."""

from __future__ import annotations

import json
from typing import Any

from limachat.dialogues.values import (
    JUDGE_MODES,
    JUDGE_VERDICTS,
    KINDS,
    LABELS,
    RATERS,
    StoreError,
    _check,
    new_id,
    now,
    to_json,
)
from limachat.dialogues.writer import writes


class Machines:
    # -- who is who ------------------------------------------------------------------------------------
    @writes
    def register_annotator(
        self, name: str, kind: str, *, model: str | None = None, endpoint: str | None = None, prompt: str | None = None
    ) -> str:
        """Declare a machine annotator (or a human, though names never declared count as human)."""
        _check(kind, KINDS, "annotator kind")
        db = self.db
        row = db.execute("select kind from annotators where name = ?", (name,)).fetchone()
        if row is not None and row[0] != kind:
            raise StoreError(f"annotator {name!r} is a {row[0]}, not a {kind}")
        if row is None:
            self._insert(
                db,
                "annotators",
                {"name": name, "kind": kind, "model": model, "endpoint": endpoint, "prompt": prompt, "created": now()},
            )
        return name

    def annotator_kinds(self) -> dict[str, str]:
        """name -> kind of every declared annotator; a name not listed is a human's."""
        return dict(self._tuples("select name, kind from annotators"))

    def kind_of(self, name: str, kinds: dict[str, str] | None = None) -> str:
        return (self.annotator_kinds() if kinds is None else kinds).get(name, "human")

    def takes(self, raters: str, kinds: dict[str, str] | None = None):
        """A test on annotator names: do `raters` include this one? `humans` and `judges` are what they say;
        `all` is both; `adjudicated` is people and adjudicators (whose final label wins: `lowest_labels`).
        An adjudicator's label settles a disagreement, it is not one more opinion: only `adjudicated` takes it."""
        _check(raters, RATERS, "raters")
        kinds = self.annotator_kinds() if kinds is None else kinds
        want = {
            "humans": ("human",),
            "judges": ("judge",),
            "all": ("human", "judge"),
            "adjudicated": ("human", "adjudicator"),
        }[raters]
        return lambda name: kinds.get(name, "human") in want

    # -- judgments -------------------------------------------------------------------------------------
    @writes
    def record_judgment(
        self,
        annotator: str,
        mode: str,
        turn_id: str,
        *,
        turn_b: str | None = None,
        result: str | None = None,
        score: float | None = None,
        explanation: str | None = None,
        raw: Any = None,
        error: str | None = None,
    ) -> str:
        """What a judge answered about a turn (or, pairwise, about two): parsed (`result` / `score`) or not
        (`error`). A parsed label is also the judge's rating of the turn, a parsed pairwise result its
        verdict on the pair, in the same transaction."""
        _check(mode, JUDGE_MODES, "judge mode")
        if self.kind_of(annotator) != "judge":
            raise StoreError(f"{annotator!r} is not a registered judge")
        if error is None and result is None and score is None:
            raise StoreError("a judgment needs a result, a score or an error")
        if mode == "label" and result is not None:
            _check(result, LABELS, "label")
        if mode == "pairwise" and result is not None:
            _check(result, JUDGE_VERDICTS, "verdict")
        jid = new_id()
        self._insert(
            self.db,
            "judgments",
            {
                "id": jid,
                "annotator": annotator,
                "mode": mode,
                "turn_id": turn_id,
                "turn_b": turn_b,
                "result": result,
                "score": score,
                "explanation": explanation,
                "raw": raw if raw is None or isinstance(raw, str) else json.dumps(raw),
                "error": error,
                "created": now(),
            },
        )
        if error is None and mode == "label":
            self.rate(turn_id, annotator, result, explanation)
        elif error is None and mode == "pairwise":
            self.verdict(self.turn(turn_id)["session_id"], turn_id, turn_b, result, annotator)
        return jid

    def judged(self, annotator: str, mode: str) -> set[tuple[str, str | None]]:
        """(turn, other turn or None) this judge has already answered in this mode, parsed."""
        return set(
            self._tuples(
                "select turn_id, turn_b from judgments where annotator = ? and mode = ? and error is null",
                (annotator, mode),
            )
        )

    def judgments(self, annotator: str | None = None) -> list[dict[str, Any]]:
        where = " where annotator = ?" if annotator else ""
        return self._query(f"select * from judgments{where} order by created, id", (annotator,) if annotator else ())

    def current_scores(self) -> dict[str, float]:
        """turn id -> its lowest score among the judges (each judge's latest parsed score counts)."""
        rows = self._tuples("""select turn_id, annotator, score from judgments where mode = 'score' and score is not null
                               order by created, id""")
        latest = {(t, a): s for t, a, s in rows}
        out: dict[str, float] = {}
        for (turn, _), score in latest.items():
            out[turn] = min(score, out.get(turn, score))
        return out

    def judge_labels(self, turn_ids: list[str]) -> dict[str, tuple[str, str]]:
        """turn id -> (label, judge) of the latest judge rating, for the pages that show it beside a human's."""
        rows = self._tuples(
            """select r.turn_id, r.label, r.annotator from ratings r join annotators a on a.name = r.annotator
                               where a.kind = 'judge' and r.current = 1 and r.turn_id in (select value from json_each(?))
                               order by r.created, r.id""",
            (json.dumps(turn_ids),),
        )
        return {turn: (label, who) for turn, label, who in rows}

    def compare_pairs(self) -> list[tuple[str, str, str]]:
        """(session, side a's turn, side b's turn): the newest finished reply of each side at each exchange
        of every compare and blind session, the pairs a pairwise judge decides."""
        rows = self._tuples(
            """select t.session_id, t.exchange, t.lane, t.id from turns t join sessions s on s.id = t.session_id
               where s.mode in ('compare', 'blind') and t.role = 'assistant' and t.status = 'ok' and t.lane is not null
               order by t.created, t.id"""
        )
        newest: dict[tuple[str, int], dict[str, str]] = {}
        for session, exchange, lane, tid in rows:
            newest.setdefault((session, exchange), {})[lane] = tid
        return [(s, sides["a"], sides["b"]) for (s, _), sides in newest.items() if {"a", "b"} <= set(sides)]

    # -- rubrics and teacher revisions -----------------------------------------------------------------
    @writes
    def set_rubric(self, category: str, content: str, annotator: str) -> str:
        """A new version of a category's rubric (by a teacher or a person); the old one stays in history."""
        if not category.strip() or not content.strip():
            raise StoreError("a rubric needs a category and some text")
        rid = new_id()
        self.db.execute("update rubrics set current = 0 where category = ? and current = 1", (category,))
        self._insert(
            self.db,
            "rubrics",
            {
                "id": rid,
                "category": category,
                "content": content,
                "annotator": annotator,
                "created": now(),
                "current": 1,
            },
        )
        return rid

    def rubrics(self) -> dict[str, dict[str, Any]]:
        """category -> its current rubric."""
        return {r["category"]: r for r in self._query("select * from rubrics where current = 1 order by category")}

    @writes
    def categorize(self, assignments: dict[str, str], annotator: str) -> int:
        """File instructions (user turns) under categories; a turn filed again moves."""
        db = self.db
        for turn_id, category in assignments.items():
            if self._turn_brief(turn_id)[1] != "user":
                raise StoreError("categories file instructions: user turns")
            db.execute(
                "insert into categories (turn_id, category, annotator, created) values (?, ?, ?, ?) "
                "on conflict(turn_id) do update set category = excluded.category, annotator = excluded.annotator, "
                "created = excluded.created",
                (turn_id, category, annotator, now()),
            )
        return len(assignments)

    def categories(self) -> dict[str, str]:
        """instruction turn id -> category."""
        return dict(self._tuples("select turn_id, category from categories"))

    @writes
    def teacher_edit(self, turn_id: str, annotator: str, content: str, rubric_id: str | None) -> str:
        """A teacher's revision of an assistant turn: a gold edit of kind `teacher`, waiting for review."""
        if self.kind_of(annotator) != "teacher":
            raise StoreError(f"{annotator!r} is not a registered teacher")
        eid = self.edit(turn_id, annotator, content)
        self._update(self.db, "edits", eid, {"rubric_id": rubric_id})
        return eid

    @writes
    def review_edit(self, edit_id: str, reviewer: str, accept: bool) -> str | None:
        """A person accepts (it becomes their own gold edit; returns its id) or rejects (it no longer
        counts as gold) a teacher's revision."""
        row = self.db.execute("select turn_id, content, review from edits where id = ?", (edit_id,)).fetchone()
        if row is None:
            raise StoreError(f"no edit {edit_id!r}")
        if not reviewer:
            raise StoreError("a review needs a reviewer")
        self._update(self.db, "edits", edit_id, {"review": "accepted" if accept else "rejected", "reviewer": reviewer})
        return self.edit(row[0], reviewer, row[1]) if accept else None

    def teacher_edits(self, pending: bool = False) -> list[dict[str, Any]]:
        """Teacher revisions with the turn they revise (`original`), its rubric's category, newest first."""
        where = " and e.review is null" if pending else ""
        return self._query(
            f"""select e.*, t.content as original, t.session_id, r.category from edits e
                join annotators a on a.name = e.annotator and a.kind = 'teacher'
                join turns t on t.id = e.turn_id left join rubrics r on r.id = e.rubric_id
                where 1 = 1{where} order by e.created desc, e.id desc"""
        )

    # -- selections and embeddings ---------------------------------------------------------------------
    @writes
    def save_selection(
        self, name: str, method: str, params: dict, coverage: dict, chosen: list[tuple[str, int]], replace: bool = False
    ) -> int:
        """A named selection: the chains (by last turn id) in the order chosen, with their cluster."""
        db = self.db
        if db.execute("select 1 from selections where name = ?", (name,)).fetchone():
            if not replace:
                raise StoreError(f"a selection named {name!r} exists; pick another name or replace it")
            db.execute("delete from selection_chains where selection = ?", (name,))
            db.execute("delete from selections where name = ?", (name,))
        self._insert(
            db,
            "selections",
            {
                "name": name,
                "created": now(),
                "method": method,
                "params": to_json("params", params),
                "coverage": json.dumps(coverage, sort_keys=True),
            },
        )
        db.conn.executemany(
            "insert into selection_chains (selection, turn_id, rank, cluster) values (?, ?, ?, ?)",
            [(name, tid, rank, cluster) for rank, (tid, cluster) in enumerate(chosen)],
        )
        return len(chosen)

    def selection(self, name: str) -> list[str]:
        """The last turn ids of a selection's chains, in the order chosen."""
        if not self._tuples("select 1 from selections where name = ?", (name,)):
            known = ", ".join(r[0] for r in self._tuples("select name from selections order by created")) or "none yet"
            raise StoreError(f"no selection named {name!r} (saved: {known})")
        return [
            r[0]
            for r in self._tuples("select turn_id from selection_chains where selection = ? order by rank", (name,))
        ]

    def selections(self) -> list[dict[str, Any]]:
        rows = self._query("""select s.*, (select count(*) from selection_chains c where c.selection = s.name) as chains
                              from selections s order by created desc""")
        for r in rows:  # `params` is one of the store's JSON columns (decoded by _row), `coverage` is not
            r["coverage"] = json.loads(r["coverage"] or "{}")
        return rows

    @writes
    def put_embeddings(self, model: str, vectors: dict[str, bytes]) -> None:
        self.db.conn.executemany(
            "insert or ignore into embeddings (key, model, vector) values (?, ?, ?)",
            [(k, model, v) for k, v in vectors.items()],
        )

    def embeddings(self, keys: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), 5000):
            out.update(
                self._tuples(
                    "select key, vector from embeddings where key in (select value from json_each(?))",
                    (json.dumps(keys[i : i + 5000]),),
                )
            )
        return out
