"""The Store's named reads (a mixin of `Store`): every question the app, the export and the report
ask of the database, each answered here and nowhere else. They run on the caller's thread with its
own connection (from async code: `await store.aio.NAME(...)`)."""

from __future__ import annotations

import json
from typing import Any

from limachat.dialogues.values import GOLD_SOURCES, RANK, StoreError, _check


def sent(branch: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages a model was sent for a branch (root first): a failed or empty reply is left out with
    the user turn it answered (a retry does not repeat the question), unless it is the branch's last."""
    out: list[dict[str, str]] = []
    for t in branch:
        if t["role"] == "assistant" and (t["status"] == "error" or not t["content"]):
            if out and out[-1]["role"] == "user" and t is not branch[-1]:
                out.pop()
            continue
        out.append({"role": t["role"], "content": t["content"]})
    return out


class Reads:
    def session(self, session_id: str) -> dict[str, Any]:
        rows = self._query("select * from sessions where id = ?", (session_id,))
        if not rows:
            raise StoreError(f"no session {session_id!r}")
        return rows[0]

    def sessions(self, limit: int = 100, offset: int = 0, annotator: str | None = None) -> list[dict[str, Any]]:
        """Newest first, with counts of turns and rated assistant turns (only `annotator`'s, when given)."""
        where = "where s.annotator = :who" if annotator is not None else ""
        return self._query(
            f"""select s.*, (select count(*) from turns t where t.session_id = s.id) as turns,
                      (select count(distinct r.turn_id) from ratings r join turns t on t.id = r.turn_id
                        where t.session_id = s.id and r.current = 1) as rated,
                      (select content from turns t where t.session_id = s.id and t.role = 'user'
                        order by t.created limit 1) as first_prompt
               from sessions s {where} order by s.created desc limit :limit offset :offset""",
            {"who": annotator, "limit": limit, "offset": offset},
        )

    def sessions_where(
        self, mode: str | None = None, since: str | None = None, until: str | None = None, study: str | None = None
    ) -> dict[str, dict]:
        """id -> session, for the export filters (a study named must exist)."""
        if study is not None:
            self.study(study)
        conditions = [
            (sql, value)
            for sql, value in (
                ("mode = ?", mode),
                ("created >= ?", since),
                ("created < ?", until),
                ("study = ?", study),
            )
            if value
        ]
        clause = (" where " + " and ".join(sql for sql, _ in conditions)) if conditions else ""
        return {s["id"]: s for s in self._query(f"select * from sessions{clause}", tuple(v for _, v in conditions))}

    def prompt_coverage(self, prompt_set: str) -> dict[tuple[str, str], int]:
        """(prompt id, checkpoint) -> sessions of the prompt set in which the checkpoint answered it."""
        rows = self._tuples(
            """select s.prompt, t.checkpoint, count(distinct s.id) from sessions s join turns t on t.session_id = s.id
               where s.prompt_set = ? and t.role = 'assistant' and t.status = 'ok' group by s.prompt, t.checkpoint""",
            (prompt_set,),
        )
        return {(p, c): n for p, c, n in rows}

    def counts(self) -> dict[str, int]:
        """Rows per table: what a check that nothing changed compares."""
        return {
            t: self._tuples(f"select count(*) from {t}")[0][0]
            for t in ("sessions", "turns", "ratings", "edits", "verdicts")
        }

    def integrity(self) -> str:
        return self._tuples("PRAGMA integrity_check")[0][0]

    def turn(self, turn_id: str) -> dict[str, Any]:
        rows = self._query("select * from turns where id = ?", (turn_id,))
        if not rows:
            raise StoreError(f"no turn {turn_id!r}")
        return rows[0]

    def turns(self, session_id: str) -> list[dict[str, Any]]:
        """Every turn of a session, every branch, in creation order."""
        return self._query("select * from turns where session_id = ? order by created, id", (session_id,))

    def tagged_sessions(self, key: str, value: str) -> list[dict[str, Any]]:
        """The sessions whose `meta` holds `key` = `value` (an ablation's replays), oldest first."""
        return self._query(
            "select * from sessions where json_extract(meta, ?) = ? order by created, id", (f"$.{key}", value)
        )

    def statuses(self, turn_ids: list[str]) -> dict[str, str]:
        return dict(
            self._tuples(
                "select id, status from turns where id in (select value from json_each(?))", (json.dumps(turn_ids),)
            )
        )

    def latest_turn(self, session_id: str, lane: str | None = None) -> str | None:
        """The newest turn of a session (of one lane of a compare session): where a resume picks up."""
        where = " and lane = ?" if lane else ""
        rows = self._tuples(
            f"select id from turns where session_id = ?{where} order by created desc, id desc limit 1",
            (session_id, lane) if lane else (session_id,),
        )
        return rows[0][0] if rows else None

    def children(self, turn_id: str | None, session_id: str | None = None) -> list[dict[str, Any]]:
        if turn_id is None:
            return self._query(
                "select * from turns where session_id = ? and parent_id is null order by created, id", (session_id,)
            )
        return self._query("select * from turns where parent_id = ? order by created, id", (turn_id,))

    def branch(self, turn_id: str) -> list[dict[str, Any]]:
        """The turns from the root of the tree down to `turn_id`."""
        rows = self._query(
            """with recursive up(id, parent_id, depth) as (
                 select id, parent_id, 0 from turns where id = ?
                 union all select t.id, t.parent_id, up.depth + 1 from turns t join up on t.id = up.parent_id)
               select turns.* from up join turns on turns.id = up.id order by up.depth desc""",
            (turn_id,),
        )
        if not rows:
            raise StoreError(f"no turn {turn_id!r}")
        return rows

    def messages(self, turn_id: str) -> list[dict[str, str]]:
        """The chat messages of a branch, for the next request. Failed or empty replies are left out,
        together with the user turn they answered, so a retry does not repeat the question."""
        return sent(self.branch(turn_id))

    def tree(self) -> list[tuple]:
        """(id, parent_id, role, status, checkpoint, exchange, session_id, lane) of every turn (the report's
        walk; no content)."""
        return self._tuples("select id, parent_id, role, status, checkpoint, exchange, session_id, lane from turns")

    def chain_turns(self) -> list[dict[str, Any]]:
        """Every turn with what a training chain needs, oldest first (the export's walk)."""
        return self._query(
            "select id, session_id, parent_id, role, content, checkpoint, status, created from turns order by created, id"
        )

    def latest_replies(self) -> list[tuple[str, str, str]]:
        """(session, lane or '', turn id) of the newest finished reply of each conversation."""
        rows = self._tuples(  # SQLite returns the bare column `id` from the row holding max(created)
            """select session_id, coalesce(lane, ''), id, max(created) from turns
               where role = 'assistant' and status = 'ok' group by session_id, coalesce(lane, '')"""
        )
        return [r[:3] for r in rows]

    def repeats_by_checkpoint(self, at: float) -> list[tuple[str, int, int]]:
        """(checkpoint, follow-up replies whose repeat share is at least `at`, follow-up replies scored)."""
        return self._tuples(
            """select coalesce(checkpoint, 'imported'), sum(repeat >= ?), count(repeat) from turns
                               where role = 'assistant' and status = 'ok' and repeat is not null group by 1""",
            (at,),
        )

    def fluency_by_checkpoint(self) -> list[tuple[str, float, int]]:
        """(checkpoint, mean fluency, replies scored)."""
        return self._tuples("""select coalesce(checkpoint, 'imported'), avg(fluency), count(fluency) from turns
                               where role = 'assistant' and status = 'ok' and fluency is not null group by 1""")

    def ratings(self, turn_id: str, *, history: bool = False) -> list[dict[str, Any]]:
        where = "" if history else " and current = 1"
        return self._query(f"select * from ratings where turn_id = ?{where} order by created, id", (turn_id,))

    def current_labels(self, session_id: str, annotator: str | None = None) -> dict[str, str]:
        """turn id -> current label (of `annotator`, or the latest of anyone's) for one session."""
        rows = self._tuples(
            """select r.turn_id, r.label, r.annotator from ratings r join turns t on t.id = r.turn_id
               where t.session_id = ? and r.current = 1 order by r.created, r.id""",
            (session_id,),
        )
        return {turn: label for turn, label, who in rows if annotator is None or who == annotator}

    def current_ratings(self, annotator: str | None = None) -> list[tuple[str, str, str]]:
        """(turn id, annotator, label) of every current rating (of one annotator, when given)."""
        if annotator is None:
            return self._tuples("select turn_id, annotator, label from ratings where current = 1")
        return self._tuples(
            "select turn_id, annotator, label from ratings where current = 1 and annotator = ?", (annotator,)
        )

    def lowest_labels(
        self,
        annotator: str | None = None,
        ratings: list[tuple[str, str, str]] | None = None,
        raters: str = "all",
        human_wins: bool = False,
    ) -> dict[str, str]:
        """turn id -> the lowest current label among its annotators (or `annotator`'s own): a turn one
        annotator failed never counts as excellent. `ratings`: current_ratings() already read; `raters`:
        as `takes` reads them (with `adjudicated`, an adjudicator's label is the turn's where there is
        one); `human_wins`: where a person rated a turn, only people's labels count."""
        kinds = self.annotator_kinds()
        keep = self.takes(raters, kinds)
        rows = [r for r in (self.current_ratings(annotator) if ratings is None else ratings) if keep(r[1])]
        by_human = {turn for turn, who, _ in rows if kinds.get(who, "human") == "human"} if human_wins else set()
        lowest: dict[str, str] = {}
        final: dict[str, str] = {}  # an adjudicator's label (the lowest, should two have settled one turn)
        for turn, who, label in rows:
            if turn in by_human and kinds.get(who, "human") != "human":
                continue
            into = final if kinds.get(who) == "adjudicator" else lowest
            if turn not in into or RANK[label] < RANK[into[turn]]:
                into[turn] = label
        return {**lowest, **final}

    def gold_edits(self, turn_ids: list[str] | None = None, source: str = "humans") -> dict[str, str]:
        """turn id -> the text of its latest gold edit (of the given turns, or of all). `source`: people's
        edits (`humans`), teachers' revisions not rejected (`teachers`), or `both`, a person's winning."""
        return {turn: text for turn, (text, _) in self.gold_editors(turn_ids, source).items()}

    def gold_editors(self, turn_ids: list[str] | None = None, source: str = "humans") -> dict[str, tuple[str, str]]:
        """turn id -> (text, annotator) of the gold edit `gold_edits` takes: who corrected the reply."""
        _check(source, GOLD_SOURCES, "gold source")
        kinds = {"humans": ("human",), "teachers": ("teacher",), "both": ("teacher", "human")}[source]
        where = "" if turn_ids is None else " and e.turn_id in (select value from json_each(:ids))"
        rows = self._tuples(
            f"""select e.turn_id, e.content, coalesce(a.kind, 'human') as kind, e.annotator from edits e
                left join annotators a on a.name = e.annotator
                where coalesce(a.kind, 'human') in (select value from json_each(:kinds))
                  and (e.review is null or e.review = 'accepted'){where}
                order by e.created, e.id""",
            {"ids": json.dumps(turn_ids), "kinds": json.dumps(kinds)},
        )
        rows.sort(key=lambda r: kinds.index(r[2]))  # stable: by kind (a person's last), then by time
        return {turn: (text, who) for turn, text, _, who in rows}  # later rows win: the latest edit

    def gold(self, turn_id: str) -> str | None:
        return self.gold_edits([turn_id]).get(turn_id)

    def verdicts(self, session_id: str) -> list[dict[str, Any]]:
        return self._query(
            "select * from verdicts where session_id = ? and current = 1 order by created, id", (session_id,)
        )

    def current_verdicts(self) -> list[dict[str, Any]]:
        return self._query(
            "select session_id, turn_a, turn_b, checkpoint_a, checkpoint_b, annotator, verdict "
            "from verdicts where current = 1"
        )
