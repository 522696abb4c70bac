"""The schema, as numbered migrations. A shipped migration is never edited: add the next one.

Ids are time-ordered random hex strings, so sessions made on several machines merge without
clashes. Times are ISO 8601 UTC strings. Ratings and verdicts are never overwritten: a new one
clears the `current` flag of the one it replaces (at most one current per turn and annotator).
`turns.exchange` numbers the user/assistant pairs down a branch (1, 2, 3 ...): LIMA's turn index.
`turns.lane` is null in chat mode and "a" / "b" for the two sides of a compare session.
"""

import re

from sqlite_utils import Database, Migrations

migrations = Migrations("limachat")


@migrations()
def m001_initial(db: Database) -> None:
    db["sessions"].create(
        {
            "id": str,
            "created": str,
            "mode": str,
            "prompt_set": str,
            "prompt": str,
            "annotator": str,
            "notes": str,
            "meta": str,
            "closed": str,
        },
        pk="id",
        not_null={"created", "mode"},
    )
    db["turns"].create(
        {
            "id": str,
            "session_id": str,
            "parent_id": str,
            "lane": str,
            "exchange": int,
            "role": str,
            "content": str,
            "checkpoint": str,
            "model": str,
            "endpoint": str,
            "params": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "ttft": float,
            "latency": float,
            "status": str,
            "error": str,
            "created": str,
        },
        pk="id",
        not_null={"session_id", "role", "content", "status", "created"},
        foreign_keys=[("session_id", "sessions", "id"), ("parent_id", "turns", "id")],
    )
    db["ratings"].create(
        {"id": str, "turn_id": str, "annotator": str, "label": str, "comment": str, "created": str, "current": int},
        pk="id",
        not_null={"turn_id", "annotator", "label", "created", "current"},
        foreign_keys=[("turn_id", "turns", "id")],
    )
    db["edits"].create(
        {"id": str, "turn_id": str, "annotator": str, "content": str, "created": str},
        pk="id",
        not_null={"turn_id", "annotator", "content", "created"},
        foreign_keys=[("turn_id", "turns", "id")],
    )
    db["verdicts"].create(
        {
            "id": str,
            "session_id": str,
            "turn_a": str,
            "turn_b": str,
            "checkpoint_a": str,
            "checkpoint_b": str,
            "verdict": str,
            "annotator": str,
            "created": str,
            "current": int,
        },
        pk="id",
        not_null={"session_id", "turn_a", "turn_b", "verdict", "annotator", "created", "current"},
        foreign_keys=[("session_id", "sessions", "id"), ("turn_a", "turns", "id"), ("turn_b", "turns", "id")],
    )
    db["turns"].create_index(["session_id", "created"])
    db["turns"].create_index(["parent_id"])
    # Covers the report's and export's walks of the tree, so they never read the (large) content.
    db["turns"].create_index(
        ["id", "parent_id", "session_id", "lane", "role", "status", "checkpoint", "exchange", "created"],
        index_name="turns_tree",
    )
    db["ratings"].create_index(["turn_id"])
    db["edits"].create_index(["turn_id"])
    db["verdicts"].create_index(["session_id"])
    # One current rating per (turn, annotator) and one current verdict per (pair, annotator).
    db.execute("CREATE UNIQUE INDEX ratings_current ON ratings (turn_id, annotator) WHERE current = 1")
    db.execute("CREATE UNIQUE INDEX verdicts_current ON verdicts (turn_a, turn_b, annotator) WHERE current = 1")


@migrations()
def m002_sampling_and_fluency(db: Database) -> None:
    """Per assistant turn: the sampling preset it was asked with, the preset's keys its endpoint was
    not sent (`omit_params`, JSON list), and its fluency (the base's mean NLL per token of the reply)."""
    db["turns"].add_column("preset", str)
    db["turns"].add_column("omitted", str)
    db["turns"].add_column("fluency", float)


def _rebuild(
    db: Database, table: str, checks: dict[str, str], columns: dict[str, str] | None = None, drop: tuple[str, ...] = ()
) -> None:
    """Recreate `table` with CHECK constraints (SQLite cannot add them in place), keeping its rows,
    indexes and the keys that point at it; `drop`: names of its constraints to leave out (replaced). Rows that break a new constraint stop the migration with
    one line naming them (nothing is changed); foreign keys are off while it runs and checked after."""
    sql = db.execute("select sql from sqlite_master where type = 'table' and name = ?", [table]).fetchone()[0]
    indexes = [
        r[0]
        for r in db.execute(
            "select sql from sqlite_master where type = 'index' and tbl_name = ? and sql is not null", [table]
        )
    ]
    for name, condition in checks.items():
        bad = db.execute(f"select count(*), min(rowid) from {table} where not ({condition})").fetchone()
        if bad[0]:
            value = db.execute(f"select * from {table} where rowid = ?", [bad[1]]).fetchone()
            raise ValueError(
                f"cannot add the check {name} to {table}: {bad[0]} rows break it (the first: {value!r}); "
                "fix them with any SQLite tool and start again"
            )
    old = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
    body = sql[sql.index("(") + 1 : sql.rindex(")")]
    for name in drop:
        body, n = re.subn(rf",\s*CONSTRAINT {name} CHECK \((?:[^()]|\([^()]*\))*\)", "", body)
        if n != 1:
            raise ValueError(f"{table} has no constraint {name}")
    extra = "".join(f',\n   "{c}" {t}' for c, t in (columns or {}).items())
    constraints = "".join(f",\n   CONSTRAINT {name} CHECK ({condition})" for name, condition in checks.items())
    db.execute(f'CREATE TABLE "{table}_new" ({body}{extra}{constraints}\n)')
    cols = ", ".join(f'"{c}"' for c in old)
    db.execute(f'INSERT INTO "{table}_new" ({cols}) SELECT {cols} FROM "{table}"')
    db.execute(f'DROP TABLE "{table}"')
    db.execute(f'ALTER TABLE "{table}_new" RENAME TO "{table}"')
    for index in indexes:
        db.execute(index)


@migrations()
def m003_checks_owner_error_detail(db: Database) -> None:
    """CHECK constraints on every enumerated column (an import or a tool can no longer store a mode,
    role, status, lane, label or verdict the app does not know); `turns.owner`, the process streaming
    a reply (so a restart can tell replies interrupted by a crash from live ones); and
    `turns.error_detail`, an error's full text, which may name the model and endpoint, beside
    `turns.error`, which names none (a blind page shows only that). Existing error texts move to
    error_detail."""
    _rebuild(db, "sessions", {"sessions_mode": "mode in ('chat', 'compare', 'blind', 'imported')"})
    _rebuild(
        db,
        "turns",
        {
            "turns_role": "role in ('user', 'assistant')",
            "turns_status": "status in ('streaming', 'ok', 'error', 'stopped')",
            "turns_lane": "lane is null or lane in ('a', 'b')",
        },
        {"owner": "TEXT", "error_detail": "TEXT"},
    )
    _rebuild(
        db,
        "ratings",
        {"ratings_label": "label in ('fail', 'pass', 'excellent')", "ratings_current": "current in (0, 1)"},
    )
    _rebuild(
        db, "verdicts", {"verdicts_verdict": "verdict in ('a', 'b', 'tie')", "verdicts_current": "current in (0, 1)"}
    )
    db.execute("update turns set error_detail = error, error = 'the request failed' where error is not null")
    broken = db.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise ValueError(f"foreign keys broken after the upgrade: {broken[:3]}")


@migrations()
def m004_curation(db: Database) -> None:
    """Machines beside the humans (issue 11). `annotators` says who each annotator name is: `human`
    (also every name it does not list), `judge` (an LLM labelling turns) or `teacher` (an LLM revising
    them), with the model, endpoint and prompt version behind a machine. `judgments` keeps what a judge
    was asked to do and what it answered, parsed or not; a label it gives is also a rating, a pairwise
    verdict also a verdict (which may now be `inconsistent`: the judge disagreed with itself once the
    sides were swapped). Teacher revisions are gold edits with the rubric they followed and a human's
    review (accepted / rejected). Rubrics are versioned per category; `categories` files instructions
    (a chain's first user turn) under one. A selection is a named, ordered set of chains (by the id of
    their last turn); `embeddings` caches a chain's vector by a hash of the model and the text."""
    db["annotators"].create(
        {"name": str, "kind": str, "model": str, "endpoint": str, "prompt": str, "created": str},
        pk="name",
        not_null={"kind", "created"},
    )
    _rebuild(db, "annotators", {"annotators_kind": "kind in ('human', 'judge', 'teacher')"})
    db["judgments"].create(
        {
            "id": str,
            "annotator": str,
            "mode": str,
            "turn_id": str,
            "turn_b": str,
            "result": str,
            "score": float,
            "explanation": str,
            "raw": str,
            "error": str,
            "created": str,
        },
        pk="id",
        not_null={"annotator", "mode", "turn_id", "created"},
        foreign_keys=[("annotator", "annotators", "name"), ("turn_id", "turns", "id"), ("turn_b", "turns", "id")],
    )
    _rebuild(
        db,
        "judgments",
        {
            "judgments_mode": "mode in ('label', 'score', 'pairwise')",
            "judgments_parsed": "(error is null) = (result is not null or score is not null)",
        },
    )
    db["judgments"].create_index(["annotator", "mode", "turn_id"])
    _rebuild(
        db, "verdicts", {"verdicts_verdict": "verdict in ('a', 'b', 'tie', 'inconsistent')"}, drop=("verdicts_verdict",)
    )
    db["rubrics"].create(
        {"id": str, "category": str, "content": str, "annotator": str, "created": str, "current": int},
        pk="id",
        not_null={"category", "content", "annotator", "created", "current"},
    )
    db.execute("CREATE UNIQUE INDEX rubrics_current ON rubrics (category) WHERE current = 1")
    db["categories"].create(
        {"turn_id": str, "category": str, "annotator": str, "created": str},
        pk="turn_id",
        not_null={"category", "annotator", "created"},
        foreign_keys=[("turn_id", "turns", "id")],
    )
    for column in ("rubric_id TEXT REFERENCES rubrics(id)", "review TEXT", "reviewer TEXT"):
        db.execute(f"ALTER TABLE edits ADD COLUMN {column}")
    _rebuild(db, "edits", {"edits_review": "review is null or review in ('accepted', 'rejected')"})
    db["selections"].create(
        {"name": str, "created": str, "method": str, "params": str, "coverage": str},
        pk="name",
        not_null={"created", "method"},
    )
    db["selection_chains"].create(
        {"selection": str, "turn_id": str, "rank": int, "cluster": int},
        pk=("selection", "turn_id"),
        not_null={"rank"},
        foreign_keys=[("selection", "selections", "name"), ("turn_id", "turns", "id")],
    )
    db["embeddings"].create({"key": str, "model": str, "vector": bytes}, pk="key", not_null={"model", "vector"})
    broken = db.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise ValueError(f"foreign keys broken after the upgrade: {broken[:3]}")


@migrations()
def m005_studies(db: Database) -> None:
    """A study (issue 12) fixes a prompt set (its prompts copied in, so a later edit of the file does not
    change it), two or more checkpoints, conversations per checkpoint and the exchanges each should
    reach, blind or not, its annotators (none listed: anyone) and the seed of every annotator's
    order and sides. A session may belong to a study, at one `slot` of its plan."""
    db["studies"].create(
        {
            "name": str,
            "created": str,
            "prompt_set": str,
            "prompts": str,
            "checkpoints": str,
            "conversations": int,
            "turns": int,
            "blind": int,
            "annotators": str,
            "seed": int,
        },
        pk="name",
        not_null={
            "created",
            "prompt_set",
            "prompts",
            "checkpoints",
            "conversations",
            "turns",
            "blind",
            "annotators",
            "seed",
        },
    )
    _rebuild(db, "studies", {"studies_counts": "conversations >= 1 and turns >= 1", "studies_blind": "blind in (0, 1)"})
    db.execute("ALTER TABLE sessions ADD COLUMN study TEXT REFERENCES studies(name)")
    db.execute("ALTER TABLE sessions ADD COLUMN slot INTEGER")
    db["sessions"].create_index(["study", "annotator", "slot"])


@migrations()
def m006_repeat(db: Database) -> None:
    """`turns.repeat`: the share of a finished reply's word trigrams already found in the earlier
    assistant turns of its branch (limachat.dialogues.repeats; null for a first reply). Existing
    replies are scored here."""
    from limachat.dialogues.repeats import repeat_share

    db["turns"].add_column("repeat", float)
    rows = db.execute("select id, parent_id, role, content, status from turns").fetchall()
    by_id = {r[0]: r for r in rows}
    for tid, parent, role, content, status in rows:
        if role != "assistant" or status != "ok":
            continue
        earlier, node = [], by_id.get(parent)
        while node is not None:
            if node[2] == "assistant" and node[4] == "ok":
                earlier.append(node[3])
            node = by_id.get(node[1])
        share = repeat_share(content, earlier)
        if share is not None:
            db.execute("update turns set repeat = ? where id = ?", (share, tid))


@migrations()
def m007_team(db: Database) -> None:
    """A team's study (issue 21). A study may split its conversations: `raters_per_conversation` people
    rate each (one drives it, the others rate it from a queue; null: everyone walks everything), and it
    names who may `adjudicate`. An annotator may be an `adjudicator`: a reviewer's final label, stored
    under `adjudicator/<name>` beside the labels it settles. A queue is a named, ordered set of replies,
    each wanting `needs` ratings, to `rate` or to `adjudicate`; a study's queue (`study` set, `source`
    'study') grows as its conversations do. `conversation_verdicts`: a person's verdict on a whole compare
    conversation (a / b / tie), kept like the per-exchange ones (a new one clears `current`)."""
    _rebuild(
        db,
        "annotators",
        {"annotators_kind": "kind in ('human', 'judge', 'teacher', 'adjudicator')"},
        drop=("annotators_kind",),
    )
    db.execute("ALTER TABLE studies ADD COLUMN raters_per_conversation INTEGER CHECK (raters_per_conversation >= 1)")
    db.execute("ALTER TABLE studies ADD COLUMN adjudicators TEXT NOT NULL DEFAULT '[]'")
    db["queues"].create(
        {
            "name": str,
            "created": str,
            "purpose": str,
            "source": str,
            "study": str,
            "needs": int,
            "adjudicators": str,
        },
        pk="name",
        not_null={"created", "purpose", "source", "needs", "adjudicators"},
        foreign_keys=[("study", "studies", "name")],
    )
    _rebuild(db, "queues", {"queues_purpose": "purpose in ('rate', 'adjudicate')", "queues_needs": "needs >= 1"})
    db["queue_items"].create(
        {"queue": str, "turn_id": str, "position": int},
        pk=("queue", "turn_id"),
        not_null={"position"},
        foreign_keys=[("queue", "queues", "name"), ("turn_id", "turns", "id")],
    )
    db["conversation_verdicts"].create(
        {"id": str, "session_id": str, "annotator": str, "verdict": str, "created": str, "current": int},
        pk="id",
        not_null={"session_id", "annotator", "verdict", "created", "current"},
        foreign_keys=[("session_id", "sessions", "id")],
    )
    _rebuild(
        db,
        "conversation_verdicts",
        {
            "conversation_verdicts_verdict": "verdict in ('a', 'b', 'tie')",
            "conversation_verdicts_current": "current in (0, 1)",
        },
    )
    db["conversation_verdicts"].create_index(["session_id", "annotator"])


@migrations()
def m008_history(db: Database) -> None:
    """Which history a study's conversations continue from (issue 24). `history`: 'own' (each side its
    own replies, as LIMA), 'shared' (after each exchange both sides continue from one reply, chosen by
    `history_rule`: 'verdict', the reply the exchange verdict preferred and side A's on a tie, or
    'reference', the prompt set's scripted reference reply) or 'both' (every conversation of the plan
    under each). The tree itself records which history each reply saw: a shared-history user turn's
    parent is the reply both sides continued from (a reference reply is a turn of checkpoint
    'reference' and no lane)."""
    db.execute(
        "ALTER TABLE studies ADD COLUMN history TEXT NOT NULL DEFAULT 'own' "
        "CHECK (history in ('own', 'shared', 'both'))"
    )
    db.execute(
        "ALTER TABLE studies ADD COLUMN history_rule TEXT NOT NULL DEFAULT 'verdict' "
        "CHECK (history_rule in ('verdict', 'reference'))"
    )


@migrations()
def m009_bench(db: Database) -> None:
    """Benchmarks in FastChat's layout (issue 32). `bench_questions` keeps each run's questions as they
    were read (the whole record, so an export writes them back unchanged), in file order. An answer is a
    session of mode 'bench' (meta: the run and the question id), each checkpoint's conversation its own
    branch, so people rate it like any other. `bench_judgments` keeps MT-Bench's judgments: a 1-10 grade
    of one reply ('single'; -1 when the judge's output held no rating, FastChat's marker) or two games of
    a pair with the answers' positions swapped ('pairwise'), with what the judge was sent and answered."""
    _rebuild(
        db,
        "sessions",
        {"sessions_mode": "mode in ('chat', 'compare', 'blind', 'imported', 'bench')"},
        drop=("sessions_mode",),
    )
    db["bench_questions"].create(
        {"run": str, "question_id": str, "position": int, "category": str, "record": str},
        pk=("run", "question_id"),
        not_null={"position", "record"},
    )
    db["bench_judgments"].create(
        {
            "id": str,
            "run": str,
            "judge": str,
            "prompt": str,
            "mode": str,
            "question_id": str,
            "turn": int,
            "repeat": int,
            "model_1": str,
            "model_2": str,
            "turn_1": str,
            "turn_2": str,
            "score": float,
            "g1_winner": str,
            "g2_winner": str,
            "user_prompt": str,
            "judgment": str,
            "g2_user_prompt": str,
            "g2_judgment": str,
            "created": str,
        },
        pk="id",
        not_null={"run", "judge", "prompt", "mode", "question_id", "turn", "repeat", "model_1", "turn_1", "created"},
        foreign_keys=[("judge", "annotators", "name"), ("turn_1", "turns", "id"), ("turn_2", "turns", "id")],
    )
    _rebuild(
        db,
        "bench_judgments",
        {
            "bench_judgments_mode": "mode in ('single', 'pairwise')",
            "bench_judgments_turn": "turn >= 1",
            "bench_judgments_single": "mode != 'single' or (score is not null and model_2 is null)",
            "bench_judgments_pair": "mode != 'pairwise' or (model_2 is not null and turn_2 is not null and "
            "g1_winner in ('model_1', 'model_2', 'tie', 'error') and g2_winner in ('model_1', 'model_2', 'tie', 'error'))",
        },
    )
    db.execute(
        "CREATE UNIQUE INDEX bench_judgments_one ON bench_judgments "
        "(run, judge, mode, question_id, turn, repeat, model_1, coalesce(model_2, ''))"
    )
