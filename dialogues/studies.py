"""The Store's study side (a mixin of `Store`): a study's definition and the sessions that belong to
it. The plan, the progress board and the statistics are built from these reads in `study.py`."""

from __future__ import annotations

import json
from typing import Any

from limachat.dialogues.values import REFERENCE, StoreError, now
from limachat.dialogues.writer import writes

_LISTS = ("prompts", "checkpoints", "annotators", "adjudicators")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, **{k: json.loads(row[k]) for k in _LISTS}, "blind": bool(row["blind"])}


class Studies:
    @writes
    def create_study(
        self,
        name: str,
        *,
        prompt_set: str,
        prompts: list[dict[str, str]],
        checkpoints: list[str],
        conversations: int,
        turns: int,
        blind: bool,
        annotators: list[str],
        seed: int,
        raters_per_conversation: int | None = None,
        adjudicators: list[str] | None = None,
        history: str = "own",
        history_rule: str = "verdict",
    ) -> str:
        if self.db.execute("select 1 from studies where name = ?", (name,)).fetchone():
            raise StoreError(f"a study named {name!r} exists already; pick another name")
        self._insert(
            self.db,
            "studies",
            {
                "name": name,
                "created": now(),
                "prompt_set": prompt_set,
                "prompts": json.dumps(prompts, ensure_ascii=False),
                "checkpoints": json.dumps(checkpoints),
                "conversations": conversations,
                "turns": turns,
                "blind": int(blind),
                "annotators": json.dumps(annotators),
                "seed": seed,
                "raters_per_conversation": raters_per_conversation,
                "adjudicators": json.dumps(sorted(set(adjudicators or []))),
                "history": history,
                "history_rule": history_rule,
            },
        )
        return name

    def study(self, name: str) -> dict[str, Any]:
        rows = self._query("select * from studies where name = ?", (name,))
        if not rows:
            known = [r[0] for r in self._tuples("select name from studies order by created")]
            raise StoreError(f"no study {name!r}" + (f"; known: {', '.join(known)}" if known else "; create one first"))
        return _decode(rows[0])

    def studies(self) -> list[dict[str, Any]]:
        return [_decode(r) for r in self._query("select * from studies order by created desc")]

    def study_row(self, name: str) -> dict[str, Any] | None:
        """The stored row as it is (JSON as text): what a sessions backup carries beside a study's sessions."""
        rows = self._query("select * from studies where name = ?", (name,))
        return rows[0] if rows else None

    @writes
    def add_reference_turn(self, session_id: str, parent_id: str, content: str) -> str:
        """A scripted reference reply to a user turn (a study's shared history under the rule 'reference'):
        an assistant turn of checkpoint 'reference' and no lane, which no side wrote."""
        return self._insert_turn(session_id, parent_id, "assistant", content, None, status="ok", checkpoint=REFERENCE)

    def lane_replies(self, session: dict[str, Any], lane: str) -> list[dict[str, Any]]:
        """One side of a compare session as its conversation: its replies, one per exchange (its newest).
        With its own history, that is its newest branch; with a shared one, the side's replies are each
        on a branch of their own (the next question follows the reply both continued from), so they are
        gathered by exchange. `session` is a row of `study_sessions` (or any with `leaf_a`, `leaf_b`)."""
        leaf = session[f"leaf_{lane}"]
        if not leaf:
            return []
        if (session.get("meta") or {}).get("history") != "shared":
            return [t for t in self.branch(leaf) if t["role"] == "assistant"]
        newest: dict[int, dict[str, Any]] = {}
        for t in self.turns(session["id"]):  # oldest first: the newest of an exchange wins
            if t["lane"] == lane and t["role"] == "assistant":
                newest[t["exchange"]] = t
        return [newest[k] for k in sorted(newest)]

    def study_sessions(self, name: str, annotator: str | None = None) -> list[dict[str, Any]]:
        """The study's sessions (oldest first), with each lane's newest turn (`leaf_a`, `leaf_b`)."""
        who = "and s.annotator = :who" if annotator is not None else ""
        return self._query(
            f"""select s.*,
                  (select id from turns t where t.session_id = s.id and t.lane = 'a' order by created desc, id desc limit 1) as leaf_a,
                  (select id from turns t where t.session_id = s.id and t.lane = 'b' order by created desc, id desc limit 1) as leaf_b
                from sessions s where s.study = :name {who} order by s.created, s.id""",
            {"name": name, "who": annotator},
        )
