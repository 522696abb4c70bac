"""The Store's benchmark side (a mixin of `Store`): a bench run's questions, its answers (sessions of mode
`bench`, one per question, each checkpoint's conversation its own branch) and MT-Bench's judgments of them.
What is built from these reads (each checkpoint's answer, FastChat's files, the report) lives in `bench.py`
and `bench_report.py`."""

from __future__ import annotations

import json
from typing import Any

from limachat.dialogues.values import BENCH_MODES, GAME_WINNERS, StoreError, _check, new_id, now
from limachat.dialogues.writer import writes


class Benches:
    # -- questions -------------------------------------------------------------------------------------
    @writes
    def add_bench_questions(self, run: str, questions: list[dict[str, Any]]) -> int:
        """Keep the run's questions (each `{"id", "category", "record"}`), as read; returns how many were
        new. A question the run already holds must be the same record: a changed file cannot silently change
        what earlier answers answered."""
        if not run.strip():
            raise StoreError("a bench run needs a name")
        db = self.db
        have = {
            qid: record
            for qid, record in db.execute("select question_id, record from bench_questions where run = ?", (run,))
        }
        start = len(have)
        added = 0
        for q in questions:
            record = json.dumps(q["record"], sort_keys=True, ensure_ascii=False)
            if q["id"] in have:
                if have[q["id"]] != record:
                    raise StoreError(
                        f"bench {run}: question {q['id']} is not the one this run answered before; "
                        "give the run another --name"
                    )
                continue
            self._insert(
                db,
                "bench_questions",
                {
                    "run": run,
                    "question_id": q["id"],
                    "position": start + added,
                    "category": q["category"],
                    "record": record,
                },
            )
            added += 1
        return added

    def bench_runs(self) -> list[str]:
        return [r[0] for r in self._tuples("select distinct run from bench_questions order by run")]

    def bench_questions(self, run: str) -> list[dict[str, Any]]:
        """The run's questions in the order they were read: `{"id", "category", "record"}`."""
        rows = self._tuples(
            "select question_id, category, record from bench_questions where run = ? order by position", (run,)
        )
        if not rows:
            known = ", ".join(self.bench_runs()) or "none yet: limachat bench answer"
            raise StoreError(f"no bench run {run!r} (runs: {known})")
        return [{"id": qid, "category": cat, "record": json.loads(record)} for qid, cat, record in rows]

    # -- answers ---------------------------------------------------------------------------------------
    @writes
    def bench_session(self, run: str, question_id: str, category: str) -> str:
        """The session holding the run's answers to one question (made on first use)."""
        row = self.db.execute(
            "select id from sessions where mode = 'bench' and prompt_set = ? and prompt = ? order by created limit 1",
            (run, question_id),
        ).fetchone()
        if row:
            return row[0]
        return self.start_session.body(
            self,
            "bench",
            prompt_set=run,
            prompt=question_id,
            meta={"bench": run, "question_id": question_id, "category": category},
        )

    def bench_turns(self, run: str) -> list[dict[str, Any]]:
        """Every turn of the run's answer sessions, oldest first, with its session's question id."""
        return self._query(
            """select t.id, t.session_id, t.parent_id, t.role, t.exchange, t.content, t.checkpoint, t.status,
                      t.completion_tokens, t.latency, t.created, s.prompt as question_id
               from turns t join sessions s on s.id = t.session_id
               where s.mode = 'bench' and s.prompt_set = ? order by t.created, t.id""",
            (run,),
        )

    @writes
    def add_bench_answer(self, run: str, question: dict[str, Any], checkpoint: str, replies: list[str]) -> str:
        """An answer written elsewhere (a FastChat model-answer file): the conversation of the question's
        user turns and `replies`, stored as finished replies of `checkpoint`. Returns the session."""
        sid = self.bench_session.body(self, run, question["id"], question["category"])
        parent = None
        for text, reply in zip(question["record"]["turns"], replies, strict=False):
            parent = self.add_user_turn.body(self, sid, text, parent_id=parent)
            parent = self.begin_assistant_turn.body(self, sid, parent, checkpoint=checkpoint, model=checkpoint)
            self.finish_assistant_turn.body(self, parent, reply, status="ok")
        return sid

    def bench_verdicts(self, run: str) -> list[dict[str, Any]]:
        """People's current verdicts between two replies of the run's answers (not a judge's), with the
        question and the exchange (MT-Bench's turn) they are about."""
        return self._query(
            """select v.turn_a, v.turn_b, v.checkpoint_a, v.checkpoint_b, v.verdict, v.annotator,
                      s.prompt as question_id, t.exchange as turn
               from verdicts v join sessions s on s.id = v.session_id join turns t on t.id = v.turn_a
               left join annotators a on a.name = v.annotator
               where s.mode = 'bench' and s.prompt_set = ? and v.current = 1 and coalesce(a.kind, 'human') = 'human'
               order by v.created, v.id""",
            (run,),
        )

    # -- judgments -------------------------------------------------------------------------------------
    @writes
    def record_bench_judgment(
        self,
        run: str,
        judge: str,
        prompt: str,
        mode: str,
        question_id: str,
        turn: int,
        model_1: str,
        turn_1: str,
        *,
        repeat: int = 0,
        model_2: str | None = None,
        turn_2: str | None = None,
        score: float | None = None,
        g1_winner: str | None = None,
        g2_winner: str | None = None,
        user_prompt: str = "",
        judgment: str = "",
        g2_user_prompt: str | None = None,
        g2_judgment: str | None = None,
    ) -> str:
        """One MT-Bench judgment: a grade of `turn_1` ('single'; -1 when none parsed) or the two games of a
        pair ('pairwise', winners in FastChat's words). A judgment already recorded is not recorded twice."""
        _check(mode, BENCH_MODES, "bench judge mode")
        if self.kind_of(judge) != "judge":
            raise StoreError(f"{judge!r} is not a registered judge")
        for w in (g1_winner, g2_winner):
            if w is not None:
                _check(w, GAME_WINNERS, "winner")
        jid = new_id()
        self._insert(
            self.db,
            "bench_judgments",
            {
                "id": jid,
                "run": run,
                "judge": judge,
                "prompt": prompt,
                "mode": mode,
                "question_id": question_id,
                "turn": turn,
                "repeat": repeat,
                "model_1": model_1,
                "model_2": model_2,
                "turn_1": turn_1,
                "turn_2": turn_2,
                "score": score,
                "g1_winner": g1_winner,
                "g2_winner": g2_winner,
                "user_prompt": user_prompt,
                "judgment": judgment,
                "g2_user_prompt": g2_user_prompt,
                "g2_judgment": g2_judgment,
                "created": now(),
            },
        )
        return jid

    def bench_judgments(self, run: str, mode: str | None = None, judge: str | None = None) -> list[dict[str, Any]]:
        where = " and mode = :mode" if mode else ""
        where += " and judge = :judge" if judge else ""
        return self._query(
            f"select * from bench_judgments where run = :run{where} order by created, id",
            {"run": run, "mode": mode, "judge": judge},
        )

    def bench_judges(self, run: str) -> list[tuple[str, str]]:
        """(judge, mode) of every judge that judged the run."""
        return self._tuples(
            "select distinct judge, mode from bench_judgments where run = ? order by judge, mode", (run,)
        )
