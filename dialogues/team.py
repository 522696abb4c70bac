"""The Store's team side (a mixin of `Store`): reasons on ratings, adjudicators' final labels, verdicts on
whole conversations, and rating queues. What is built from these reads (who rates what next, agreement)
lives in `queues.py` and `agreement.py`."""

from __future__ import annotations

import json
from typing import Any

from limachat.dialogues.values import ADJUDICATOR, PURPOSES, VERDICTS, StoreError, _check, check_text, new_id, now
from limachat.dialogues.writer import writes

REASON_CHARS = 300  # a reason is one line: why this label


def adjudicator_name(reviewer: str) -> str:
    """The annotator a reviewer's final labels are stored under (their own ratings stay theirs)."""
    return ADJUDICATOR + reviewer


class Team:
    # -- reasons ---------------------------------------------------------------------------------------
    @writes
    def set_reason(self, turn_id: str, annotator: str, reason: str) -> str:
        """The one-line reason of the annotator's current rating of the turn (blank: none)."""
        reason = " ".join(check_text(reason or "", "a reason").split())
        if len(reason) > REASON_CHARS:
            raise StoreError(f"a reason is one line of at most {REASON_CHARS} characters, not {len(reason)}")
        db = self.db
        row = db.execute(
            "select id from ratings where turn_id = ? and annotator = ? and current = 1", (turn_id, annotator)
        ).fetchone()
        if row is None:
            raise StoreError("Rate the reply first: a reason says why it got its label.")
        db.execute("update ratings set comment = ? where id = ?", (reason or None, row[0]))
        return row[0]

    def reason(self, turn_id: str, annotator: str) -> str | None:
        row = self.db.execute(
            "select comment from ratings where turn_id = ? and annotator = ? and current = 1", (turn_id, annotator)
        ).fetchone()
        return row[0] if row else None

    def current_reasons(self, session_id: str, annotator: str) -> dict[str, str]:
        """turn id -> the reason of the annotator's current rating, for one session's turns that have one."""
        return dict(
            self._tuples(
                """select r.turn_id, r.comment from ratings r join turns t on t.id = r.turn_id
                   where t.session_id = ? and r.annotator = ? and r.current = 1 and r.comment is not null""",
                (session_id, annotator),
            )
        )

    def reasons(self) -> list[tuple[str, str, str, str, str]]:
        """(turn id, checkpoint, annotator, label, reason) of every current rating that gives a reason."""
        return self._tuples(
            """select r.turn_id, coalesce(t.checkpoint, 'imported'), r.annotator, r.label, r.comment
               from ratings r join turns t on t.id = r.turn_id
               where r.current = 1 and r.comment is not null and r.comment != '' order by r.created, r.id"""
        )

    # -- adjudication ----------------------------------------------------------------------------------
    @writes
    def adjudicate(self, turn_id: str, reviewer: str, label: str, reason: str | None = None) -> str:
        """A reviewer's final label of a turn, stored as the rating of `adjudicator/<reviewer>` (an
        annotator of kind adjudicator); everyone else's labels stay as they are."""
        if not reviewer:
            raise StoreError("an adjudication needs a reviewer")
        name = adjudicator_name(reviewer)
        self.register_annotator(name, "adjudicator")
        rid = self.rate(turn_id, name, label)
        if reason:
            self.set_reason(turn_id, name, reason)
        return rid

    # -- whole conversations ---------------------------------------------------------------------------
    @writes
    def conversation_verdict(self, session_id: str, annotator: str, verdict: str) -> str:
        """A person's verdict on a whole compare conversation: side a better, b better, or a tie."""
        _check(verdict, VERDICTS, "verdict")
        if not annotator:
            raise StoreError("a verdict needs an annotator")
        if self.session(session_id)["mode"] not in ("compare", "blind"):
            raise StoreError("a conversation verdict compares the two sides of a compare session")
        db = self.db
        db.execute(
            "update conversation_verdicts set current = 0 where session_id = ? and annotator = ? and current = 1",
            (session_id, annotator),
        )
        vid = new_id()
        self._insert(
            db,
            "conversation_verdicts",
            {
                "id": vid,
                "session_id": session_id,
                "annotator": annotator,
                "verdict": verdict,
                "created": now(),
                "current": 1,
            },
        )
        return vid

    def conversation_verdicts(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Current verdicts on whole conversations (of one session, when given), oldest first."""
        where = "and session_id = :sid" if session_id else ""
        return self._query(
            f"select * from conversation_verdicts where current = 1 {where} order by created, id", {"sid": session_id}
        )

    # -- queues ------------------------------------------------------------------------------------------
    @writes
    def create_queue(
        self,
        name: str,
        *,
        purpose: str,
        source: str,
        needs: int,
        turn_ids: list[str],
        study: str | None = None,
        adjudicators: list[str] | None = None,
    ) -> str:
        _check(purpose, PURPOSES, "queue purpose")
        db = self.db
        if db.execute("select 1 from queues where name = ?", (name,)).fetchone():
            raise StoreError(f"a queue named {name!r} exists already; pick another name")
        self._insert(
            db,
            "queues",
            {
                "name": name,
                "created": now(),
                "purpose": purpose,
                "source": source,
                "study": study,
                "needs": needs,
                "adjudicators": json.dumps(sorted(set(adjudicators or []))),
            },
        )
        self.add_queue_items(name, turn_ids)  # on the writer thread already: in this transaction
        return name

    @writes
    def add_queue_items(self, name: str, turn_ids: list[str]) -> int:
        """Append the turns not in the queue yet (a study's queue grows as its conversations do)."""
        db = self.db
        have = {r[0] for r in db.execute("select turn_id from queue_items where queue = ?", (name,))}
        start = db.execute(
            "select coalesce(max(position), -1) + 1 from queue_items where queue = ?", (name,)
        ).fetchone()
        new = [t for t in dict.fromkeys(turn_ids) if t not in have]
        for i, turn in enumerate(new):
            if self._turn_brief(turn)[1] != "assistant":
                raise StoreError(f"a queue holds replies; turn {turn!r} is a user turn")
            self._insert(db, "queue_items", {"queue": name, "turn_id": turn, "position": start[0] + i})
        return len(new)

    def queue(self, name: str) -> dict[str, Any]:
        rows = self._query("select * from queues where name = ?", (name,))
        if not rows:
            known = [r[0] for r in self._tuples("select name from queues order by created")]
            raise StoreError(f"no queue {name!r}" + (f"; known: {', '.join(known)}" if known else "; create one first"))
        return {**rows[0], "adjudicators": json.loads(rows[0]["adjudicators"])}

    def queues(self) -> list[dict[str, Any]]:
        return [
            {**r, "adjudicators": json.loads(r["adjudicators"])}
            for r in self._query("select * from queues order by created desc")
        ]

    def queue_items(self, name: str) -> list[str]:
        """The queue's replies (turn ids), in order."""
        return [
            r[0] for r in self._tuples("select turn_id from queue_items where queue = ? order by position", (name,))
        ]

    def ratings_of(self, turn_ids: list[str]) -> list[tuple[str, str, str, str | None]]:
        """(turn id, annotator, label, reason) of the current ratings of these turns."""
        if not turn_ids:
            return []
        marks = ", ".join("?" * len(turn_ids))
        return self._tuples(
            f"select turn_id, annotator, label, comment from ratings where current = 1 and turn_id in ({marks})",
            tuple(turn_ids),
        )
