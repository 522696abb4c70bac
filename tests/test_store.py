"""The SQLite store: schema, the turn tree, ratings with history, threads, and crash safety."""

from __future__ import annotations

import asyncio
import gc
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from limachat.dialogues.migrations import migrations
from limachat.dialogues.store import INTERRUPTED, Store, StoreError

ALL = [
    "m001_initial",
    "m002_sampling_and_fluency",
    "m003_checks_owner_error_detail",
    "m004_curation",
    "m005_studies",
    "m006_repeat",
    "m007_team",
    "m008_history",
    "m009_bench",
]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "lima.db")


def test_blank_database_gets_the_whole_schema(tmp_path):
    path = tmp_path / "new.db"
    store = Store(path)
    assert {m.name for m in migrations.applied(store.db)} == set(ALL)
    assert not migrations.pending(store.db)
    conn = sqlite3.connect(path)  # any SQLite tool can open it
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"sessions", "turns", "ratings", "edits", "verdicts"} <= tables
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    Store(path)  # opening again applies nothing twice
    assert [m.name for m in migrations.applied(store.db)] == ALL
    assert {"preset", "omitted", "fluency", "owner", "error_detail"} <= set(store.db["turns"].columns_dict)
    # Another tool cannot store what the app does not know either: the schema checks every enum.
    sid = store.start_session("compare")
    ua, ub = store.add_user_turn(sid, "q", lane="a"), store.add_user_turn(sid, "q", lane="b")
    a = store.begin_assistant_turn(sid, ua, checkpoint="x", lane="a")
    b = store.begin_assistant_turn(sid, ub, checkpoint="y", lane="b")
    store.rate(a, "ana", "pass")
    store.verdict(sid, a, b, "tie", "ana")
    for sql in [
        "insert into sessions (id, created, mode) values ('x', 'now', 'party')",
        "update turns set status = 'done'",
        "update turns set role = 'system'",
        "update turns set lane = 'c'",
        "update ratings set label = 'great'",
        "update verdicts set verdict = 'both'",
        "insert into annotators (name, kind, created) values ('r2', 'robot', 'now')",
    ]:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            conn.execute(sql)


def test_upgrade_from_the_first_schema_keeps_turns(tmp_path):
    from sqlite_utils import Database

    from limachat.dialogues.migrations import m001_initial

    path = tmp_path / "old.db"
    old = Database(path)
    m001_initial(old)
    old["sessions"].insert({"id": "s1", "created": "2026-01-01", "mode": "chat"})
    old["turns"].insert(
        {"id": "t1", "session_id": "s1", "role": "user", "content": "hi", "status": "ok", "created": "2026-01-01"}
    )
    old["_sqlite_migrations"].insert(
        {"id": 1, "migration_set": "limachat", "name": "m001_initial", "applied_at": "2026-01-01"}, pk="id"
    )
    old.close()
    store = Store(path)
    assert store.turn("t1")["content"] == "hi" and store.turn("t1")["fluency"] is None
    assert [m.name for m in migrations.applied(store.db)] == ALL and store.integrity() == "ok"


def _second_schema(path):
    from sqlite_utils import Database

    from limachat.dialogues.migrations import m001_initial, m002_sampling_and_fluency

    old = Database(path)
    m001_initial(old)
    m002_sampling_and_fluency(old)
    for i, name in enumerate(["m001_initial", "m002_sampling_and_fluency"], 1):
        old["_sqlite_migrations"].insert(
            {"id": i, "migration_set": "limachat", "name": name, "applied_at": "2026-01-01"}, pk="id"
        )
    old["sessions"].insert({"id": "s1", "created": "2026-01-01", "mode": "blind"})
    old["turns"].insert(
        {"id": "u1", "session_id": "s1", "role": "user", "content": "hi", "status": "ok", "created": "1"}
    )
    old["turns"].insert(
        {
            "id": "a1",
            "session_id": "s1",
            "parent_id": "u1",
            "role": "assistant",
            "content": "",
            "status": "error",
            "error": "http://10.0.0.7:8001/v1 does not serve model 'secret-7b'",
            "created": "2",
        }
    )
    old["ratings"].insert(
        {"id": "r1", "turn_id": "a1", "annotator": "ana", "label": "fail", "created": "3", "current": 1}
    )
    return old


def test_upgrade_from_the_second_schema_adds_checks_and_moves_error_text(tmp_path):
    _second_schema(tmp_path / "v2.db").close()
    store = Store(tmp_path / "v2.db")
    t = store.turn("a1")
    assert t["error"] == "the request failed" and "secret-7b" in t["error_detail"]  # a blind page shows only `error`
    assert store.counts() == {"sessions": 1, "turns": 2, "ratings": 1, "edits": 0, "verdicts": 0}
    assert store.lowest_labels() == {"a1": "fail"} and store.integrity() == "ok"
    assert not sqlite3.connect(store.path).execute("PRAGMA foreign_key_check").fetchall()


def test_upgrade_to_curation_keeps_verdicts_and_edits_and_lets_a_judge_be_inconsistent(tmp_path):
    from sqlite_utils import Database

    from limachat.dialogues.migrations import m001_initial, m002_sampling_and_fluency, m003_checks_owner_error_detail

    db = Database(tmp_path / "v3.db")
    for i, step in enumerate([m001_initial, m002_sampling_and_fluency, m003_checks_owner_error_detail], 1):
        step(db)
        db["_sqlite_migrations"].insert(
            {"id": i, "migration_set": "limachat", "name": step.__name__, "applied_at": "1"}, pk="id"
        )
    sid, a, b = "s1", "a1", "b1"
    db["sessions"].insert({"id": sid, "created": "1", "mode": "compare"})
    for tid, parent, lane, role in (
        ("ua", None, "a", "user"),
        ("ub", None, "b", "user"),
        (a, "ua", "a", "assistant"),
        (b, "ub", "b", "assistant"),
    ):
        db["turns"].insert(
            {
                "id": tid,
                "session_id": sid,
                "parent_id": parent,
                "lane": lane,
                "role": role,
                "content": "x",
                "status": "ok",
                "created": "2",
            }
        )
    db["verdicts"].insert(
        {
            "id": "v1",
            "session_id": sid,
            "turn_a": a,
            "turn_b": b,
            "verdict": "a",
            "annotator": "ana",
            "created": "3",
            "current": 1,
        }
    )
    db["edits"].insert({"id": "e1", "turn_id": a, "annotator": "ana", "content": "better", "created": "3"})
    db.close()
    store = Store(tmp_path / "v3.db")
    assert [m.name for m in migrations.applied(store.db)] == ALL and store.integrity() == "ok"
    assert store.counts() == {"sessions": 1, "turns": 4, "ratings": 0, "edits": 1, "verdicts": 1}
    assert store.gold(a) == "better" and store.verdicts(sid)[0]["verdict"] == "a"
    store.register_annotator("judge/x/pairwise-v1", "judge")
    store.record_judgment("judge/x/pairwise-v1", "pairwise", a, turn_b=b, result="inconsistent", raw=["A", "A"])
    assert {v["annotator"]: v["verdict"] for v in store.verdicts(sid)} == {
        "ana": "a",
        "judge/x/pairwise-v1": "inconsistent",
    }
    with pytest.raises(StoreError, match="verdict must be one of a, b, tie, not 'inconsistent'"):
        store.verdict(sid, a, b, "inconsistent", "ana")  # a person picks a side or a tie


def test_upgrade_to_studies_keeps_sessions_outside_any_study(tmp_path):
    from sqlite_utils import Database

    from limachat.dialogues import migrations as m

    db = Database(tmp_path / "v4.db")
    steps = [m.m001_initial, m.m002_sampling_and_fluency, m.m003_checks_owner_error_detail, m.m004_curation]
    for i, step in enumerate(steps, 1):
        step(db)
        db["_sqlite_migrations"].insert(
            {"id": i, "migration_set": "limachat", "name": step.__name__, "applied_at": "1"}, pk="id"
        )
    db["sessions"].insert({"id": "s1", "created": "1", "mode": "compare", "meta": '{"lanes": {"a": "x", "b": "y"}}'})
    db.close()
    store = Store(tmp_path / "v4.db")
    assert [m.name for m in migrations.applied(store.db)] == ALL and store.integrity() == "ok"
    assert store.session("s1")["study"] is None and store.studies() == []
    with pytest.raises(StoreError, match="no study 'ghost'"):
        store.start_session("compare", study="ghost", slot=0)
    store.create_study(
        "s",
        prompt_set="p",
        prompts=[{"id": "1", "prompt": "hi"}],
        checkpoints=["x", "y"],
        conversations=1,
        turns=1,
        blind=True,
        annotators=[],
        seed=0,
    )
    sid = store.start_session("blind", study="s", slot=0)
    assert [r["id"] for r in store.study_sessions("s")] == [sid]
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself refuses a study of zero conversations
        store.db.execute(
            "insert into studies (name, created, prompt_set, prompts, checkpoints, conversations, turns, blind,"
            " annotators, seed) values ('t', '1', 'p', '[]', '[]', 0, 1, 1, '[]', 0)"
        )


def test_upgrade_to_teams_keeps_annotators_and_studies_and_lets_an_adjudicator_in(tmp_path):
    from sqlite_utils import Database

    from limachat.dialogues import migrations as m

    db = Database(tmp_path / "v6.db")
    for i, name in enumerate(ALL[:6], 1):
        getattr(m, name)(db)
        db["_sqlite_migrations"].insert(
            {"id": i, "migration_set": "limachat", "name": name, "applied_at": "1"}, pk="id"
        )
    db["annotators"].insert({"name": "judge/x", "kind": "judge", "created": "1"})
    db["studies"].insert(
        {
            "name": "old",
            "created": "1",
            "prompt_set": "p",
            "prompts": "[]",
            "checkpoints": '["x", "y"]',
            "conversations": 1,
            "turns": 1,
            "blind": 1,
            "annotators": "[]",
            "seed": 0,
        }
    )
    db.close()
    store = Store(tmp_path / "v6.db")
    assert [m.name for m in migrations.applied(store.db)] == ALL and store.integrity() == "ok"
    assert store.kind_of("judge/x") == "judge"
    old = store.study("old")
    assert old["raters_per_conversation"] is None and old["adjudicators"] == []
    store.register_annotator("adjudicator/cy", "adjudicator")
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself refuses a queue that wants no ratings
        store.db.execute("insert into queues values ('q', '1', 'rate', 'filter', null, 0, '[]')")


def test_an_upgrade_refuses_rows_that_break_a_check_and_changes_nothing(tmp_path):
    old = _second_schema(tmp_path / "bad.db")
    old["sessions"].insert({"id": "s2", "created": "2026-01-02", "mode": "party"})
    old.close()
    before = (tmp_path / "bad.db").read_bytes()
    with pytest.raises(StoreError, match=r"cannot add the check sessions_mode to sessions: 1 rows break it .*'party'"):
        Store(tmp_path / "bad.db")
    conn = sqlite3.connect(tmp_path / "bad.db")
    assert conn.execute("select count(*) from _sqlite_migrations").fetchone()[0] == 2
    assert conn.execute("select mode from sessions where id = 's2'").fetchone()[0] == "party"
    assert len(before) > 0


def test_a_conversation_with_branches(store):
    sid = store.start_session("chat", annotator="ana")
    u1 = store.add_user_turn(sid, "Plan a trip to Porto")
    a1 = store.begin_assistant_turn(
        sid, u1, checkpoint="dialogue", model="dialogue", endpoint="http://x/v1", params={"temperature": 0.7}
    )
    store.save_partial(a1, "Day 1:")
    assert store.turn(a1)["content"] == "Day 1:" and store.turn(a1)["status"] == "streaming"
    store.finish_assistant_turn(a1, "Day 1: Ribeira.", prompt_tokens=30, completion_tokens=5, ttft=0.2, latency=1.5)
    regen = store.begin_assistant_turn(sid, u1, checkpoint="dialogue")  # regenerate: a sibling
    store.finish_assistant_turn(regen, "Start at the Livraria Lello.")
    u2 = store.add_user_turn(sid, "And day 2?", parent_id=a1)
    edited = store.add_user_turn(sid, "And where to eat?", parent_id=a1)  # edit: another sibling

    assert [t["id"] for t in store.children(u1)] == [a1, regen]
    assert [t["id"] for t in store.children(a1)] == [u2, edited]
    assert len(store.turns(sid)) == 5  # nothing replaced, nothing deleted
    assert store.messages(u2) == [
        {"role": "user", "content": "Plan a trip to Porto"},
        {"role": "assistant", "content": "Day 1: Ribeira."},
        {"role": "user", "content": "And day 2?"},
    ]
    t = store.turn(a1)
    assert (t["params"], t["prompt_tokens"], t["completion_tokens"], t["ttft"], t["latency"], t["status"]) == (
        {"temperature": 0.7},
        30,
        5,
        0.2,
        1.5,
        "ok",
    )
    assert [store.turn(x)["exchange"] for x in (u1, a1, u2)] == [1, 1, 2]
    session = store.sessions()[0]
    assert (session["turns"], session["first_prompt"]) == (5, "Plan a trip to Porto")


def test_failed_reply_keeps_partial_text_and_the_question(store):
    sid = store.start_session()
    u1 = store.add_user_turn(sid, "Hello")
    a1 = store.begin_assistant_turn(sid, u1, checkpoint="zero-shot")
    store.finish_assistant_turn(a1, "Hi th", status="error", error="stream from zero-shot broke")
    t = store.turn(a1)
    assert (t["content"], t["status"], t["error"]) == ("Hi th", "error", "stream from zero-shot broke")
    assert store.messages(a1) == [{"role": "user", "content": "Hello"}]  # a retry asks the same question again


def test_ratings_keep_history_and_never_cross_annotators(store):
    sid = store.start_session()
    u = store.add_user_turn(sid, "q")
    a = store.begin_assistant_turn(sid, u, checkpoint="dialogue")
    store.finish_assistant_turn(a, "answer")
    store.rate(a, "ana", "pass")
    store.rate(a, "ben", "fail")
    store.rate(a, "ana", "excellent", comment="on second reading")
    current = {r["annotator"]: r["label"] for r in store.ratings(a)}
    assert current == {"ana": "excellent", "ben": "fail"}
    assert [r["label"] for r in store.ratings(a, history=True)] == ["pass", "fail", "excellent"]
    assert store.current_labels(sid, "ben") == {a: "fail"}
    # the same label again (a double click in the app) adds no history
    ben = next(r["id"] for r in store.ratings(a) if r["annotator"] == "ben")
    assert store.rate(a, "ben", "fail") == ben
    assert len(store.ratings(a, history=True)) == 3


def test_gold_edits_and_verdicts(store):
    sid = store.start_session("compare")
    ua, ub = store.add_user_turn(sid, "q", lane="a"), store.add_user_turn(sid, "q", lane="b")
    a = store.begin_assistant_turn(sid, ua, checkpoint="zero-shot", lane="a")
    b = store.begin_assistant_turn(sid, ub, checkpoint="dialogue", lane="b")
    store.edit(a, "ana", "a better answer")
    assert store.gold(a) == "a better answer" and store.turn(a)["content"] == ""
    store.verdict(sid, a, b, "b", "ana")
    store.verdict(sid, a, b, "tie", "ana")
    [v] = store.verdicts(sid)
    assert (v["verdict"], v["checkpoint_a"], v["checkpoint_b"]) == ("tie", "zero-shot", "dialogue")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, sid, u, a: s.rate(a, "ana", "great"), "label must be one of fail, pass, excellent, not 'great'"),
        (lambda s, sid, u, a: s.rate(u, "ana", "pass"), "only assistant turns are rated"),
        (lambda s, sid, u, a: s.add_user_turn(sid, "   "), "a user turn needs some text"),
        (lambda s, sid, u, a: s.add_user_turn(sid, "x", parent_id=u), "a user turn cannot follow a user turn"),
        (lambda s, sid, u, a: s.start_session("party"), "mode must be one of"),
        (lambda s, sid, u, a: s.turn("nope"), "no turn 'nope'"),
    ],
)
def test_bad_requests_are_refused_with_one_line(store, call, message):
    sid = store.start_session()
    u = store.add_user_turn(sid, "q")
    a = store.begin_assistant_turn(sid, u, checkpoint="x")
    with pytest.raises(StoreError, match=message):
        call(store, sid, u, a)


def test_many_threads_write_at_once_and_nothing_is_lost(store):
    sid = store.start_session()
    errors, written = [], []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                u = store.add_user_turn(sid, f"w{n} q{i}")
                a = store.begin_assistant_turn(sid, u, checkpoint="dialogue")
                store.finish_assistant_turn(a, f"w{n} a{i}")
                store.rate(a, f"annotator{n}", "pass")
                written.append(a)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = sqlite3.connect(store.path)
    assert check.execute("select count(*) from turns").fetchone()[0] == 16 * 25 * 2
    assert check.execute("select count(*) from ratings where current = 1").fetchone()[0] == 16 * 25
    assert check.execute("select count(*) from turns where status = 'ok' and role = 'assistant'").fetchone()[0] == len(
        written
    )


KILLED_WRITER = """
import asyncio, sys, threading
from limachat.dialogues.store import Store
store = Store(sys.argv[1])
lock = threading.Lock()

def say(line):
    with lock:
        print(line, flush=True)  # printed only once the write is acknowledged, so committed

def thread_writer(n):
    sid = store.start_session(annotator=f"t{n}")
    parent = None
    while True:
        u = store.add_user_turn(sid, f"t{n} q", parent_id=parent)
        say(u)
        a = store.begin_assistant_turn(sid, u, checkpoint="dialogue")
        store.save_partial(a, "part")
        store.finish_assistant_turn(a, "answer")
        say(a)
        say(store.rate(a, f"t{n}", "pass"))
        parent = a

async def async_writer(n):
    sid = await store.aio.start_session(annotator=f"a{n}")
    while True:
        say(await store.aio.add_user_turn(sid, f"a{n} q"))

for n in range(8):
    threading.Thread(target=thread_writer, args=(n,), daemon=True).start()

async def main():
    await asyncio.gather(*(async_writer(n) for n in range(8)))

asyncio.run(main())
"""


def test_killing_a_process_that_writes_under_load_keeps_every_acknowledged_write(tmp_path):
    """16 writers (8 threads, 8 asyncio tasks) through one store; SIGKILL mid-flight. Every write
    the store acknowledged is in the file, and the file is sound."""
    path = tmp_path / "killed.db"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 2000 and time.monotonic() < deadline:
        acknowledged.append(proc.stdout.readline().strip())
    proc.kill()  # SIGKILL, with writes queued and a transaction open
    proc.wait()
    acknowledged += [line.strip() for line in proc.stdout if line.strip()]
    conn = sqlite3.connect(path)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    present = {r[0] for t in ("turns", "ratings") for r in conn.execute(f"select id from {t}")}
    assert len(acknowledged) >= 2000 and set(acknowledged) <= present


CHILD_WRITER = """
import sys
from limachat.dialogues.store import Store
store = Store(sys.argv[1])
sid = store.start_session(annotator="job")
for i in range(50):
    store.add_user_turn(sid, "j" * 900)
store.close()
"""


def test_a_second_store_in_this_process_and_a_job_in_another_leave_the_file_sound(tmp_path):
    """The app holds the database; a command in the same process opens it again (CITING's rounds train
    from it) and a job in another process writes and exits. If anything but SQLite opened the file, its
    close would drop this process's locks, the job's exit would delete the WAL under the app, and the next
    read would fail with "disk I/O error" (it did, in CI). Every row stays, and the file is sound."""
    path = tmp_path / "shared.db"
    store = Store(path)
    sid = store.start_session(annotator="app")
    for _ in range(300):
        store.add_user_turn(sid, "a" * 900)
    Store(path).close()
    subprocess.run([sys.executable, "-c", CHILD_WRITER, str(path)], check=True, timeout=120)
    for _ in range(100):
        store.add_user_turn(sid, "b" * 900)
    seen: list = []

    def read() -> None:  # on a thread of its own: a new connection
        try:
            seen.append({s["annotator"] for s in store.sessions(limit=10)})
        except sqlite3.Error as e:
            seen.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    assert seen == [{"app", "job"}]
    store.close()
    check = sqlite3.connect(path)
    assert check.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert check.execute("select count(*) from turns").fetchone()[0] == 450


def test_writes_queued_together_share_one_commit(store):
    sid = store.start_session()

    async def main():
        return await asyncio.gather(*(store.aio.add_user_turn(sid, f"q{i}") for i in range(200)))

    before = store.commits
    ids = asyncio.run(main())
    assert len(set(ids)) == 200 and len(store.turns(sid)) == 200
    assert store.commits - before < 50  # 200 writes queued at once: a few transactions, not 200


def test_one_failing_write_in_a_group_does_not_undo_the_others(store):
    sid = store.start_session()

    async def main():
        return await asyncio.gather(
            store.aio.add_user_turn(sid, "kept"),
            store.aio.rate("nope", "ana", "pass"),
            store.aio.add_user_turn(sid, "kept too"),
            return_exceptions=True,
        )

    first, failed, last = asyncio.run(main())
    assert isinstance(failed, StoreError) and "no turn 'nope'" in str(failed)
    assert [t["content"] for t in store.turns(sid)] == ["kept", "kept too"]


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("insert into sessions (id, created, mode) values ('locker', 'now', 'chat')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_the_event_loop_never_waits_on_a_locked_database(tmp_path):
    """Another process holds the write lock for 1.5 s while the app's async code writes: the event
    loop keeps ticking (no SQLite call runs on it) and the writes land once the lock is gone."""
    store = Store(tmp_path / "busy.db")
    sid = store.start_session()
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(store.path), "1.5"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"

    async def main():
        gaps, last = [], time.perf_counter()

        async def ticker():
            nonlocal last
            while True:
                await asyncio.sleep(0.01)
                gaps.append(time.perf_counter() - last)
                last = time.perf_counter()

        tick = asyncio.create_task(ticker())
        ids = await asyncio.gather(*(store.aio.add_user_turn(sid, f"q{i}") for i in range(20)), store.aio.turns(sid))
        tick.cancel()
        return ids, max(gaps)

    started = time.perf_counter()
    # The gaps are the loop's own: a full garbage collection of the suite's heap (models trained in this
    # process earlier) can stall any Python code for half a second, and is not what this measures.
    gc.collect()
    gc.disable()
    try:
        ids, worst_gap = asyncio.run(main())
    finally:
        gc.enable()
    proc.wait()
    assert time.perf_counter() - started >= 1.0  # the writes did wait for the lock ...
    assert worst_gap < 0.25  # ... but the loop never did
    assert len(store.turns(sid)) == 20


def test_a_lock_held_past_the_busy_timeout_fails_the_write_with_one_line(tmp_path):
    store = Store(tmp_path / "locked.db", busy_timeout_ms=300)
    sid = store.start_session()
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(store.path), "2"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(StoreError, match=r"locked\.db is locked by another process .*nothing was written"):
        store.add_user_turn(sid, "q")
    proc.wait()
    store.add_user_turn(sid, "q")  # once the lock is gone the store works again
    assert len(store.turns(sid)) == 1


def test_replies_left_streaming_by_a_dead_process_are_marked_interrupted(store):
    sid = store.start_session()
    u = store.add_user_turn(sid, "q")
    dead = store.begin_assistant_turn(sid, u, checkpoint="dialogue")
    live = store.begin_assistant_turn(sid, u, checkpoint="dialogue")
    store.save_partial(dead, "half a repl")
    conn = sqlite3.connect(store.path)  # as if a process that has exited had started it
    conn.execute("update turns set owner = ? where id = ?", (f"{socket.gethostname()}:999999999:1", dead))
    conn.commit()
    assert store.repair_interrupted() == 1
    t = store.turn(dead)
    assert (t["status"], t["error"], t["content"]) == ("error", INTERRUPTED, "half a repl")
    assert store.turn(live)["status"] == "streaming"  # this process is alive: its reply is still coming
    assert store.messages(u) == [{"role": "user", "content": "q"}]


def test_closing_a_session_and_updating_notes(store):
    sid = store.start_session("blind", meta={"a": "dialogue", "b": "zero-shot"})
    assert store.session(sid)["closed"] is None
    store.update_session(sid, notes="A rambles after turn 3")
    store.close_session(sid)
    s = store.session(sid)
    assert s["closed"] and s["notes"] == "A rambles after turn 3" and s["meta"] == {"a": "dialogue", "b": "zero-shot"}
    with pytest.raises(StoreError, match="cannot change mode"):
        store.update_session(sid, mode="chat")
    with pytest.raises(StoreError, match="no session 'nope'"):
        store.close_session("nope")


def test_a_sqlite_call_on_the_event_loop_is_refused(store):
    """Async code reaches the store only through `store.aio`; a direct call there is a bug, caught."""
    sid = store.start_session()

    async def wrong():
        store.add_user_turn(sid, "q")

    async def right():
        u = await store.aio.add_user_turn(sid, "q")
        return await store.aio.turn(u)

    with pytest.raises(RuntimeError, match="a SQLite call on the event loop"):
        asyncio.run(wrong())
    assert asyncio.run(right())["content"] == "q"


def test_a_write_that_ends_the_whole_transaction_fails_alone(store):
    """A write whose error rolls back the shared transaction (as a RAISE(ROLLBACK) trigger or a full
    disk would) fails alone: the writes queued with it run again and are committed."""
    sid = store.start_session()
    gate, holding = threading.Event(), threading.Event()

    def hold(db):
        holding.set()
        gate.wait(10)

    def ends_it(db):
        db.execute("ROLLBACK")
        raise sqlite3.OperationalError("the transaction was rolled back")

    first = threading.Thread(target=store.transaction, args=(hold,))
    first.start()
    holding.wait(10)  # the writer is busy: the next three queue up and share one transaction
    outcomes = {}

    def run(name, fn):
        try:
            outcomes[name] = fn()
        except Exception as e:  # noqa: BLE001 - asserted below
            outcomes[name] = e

    threads = [
        threading.Thread(target=run, args=args)
        for args in (
            ("before", lambda: store.add_user_turn(sid, "before")),
            ("bad", lambda: store.transaction(ends_it)),
            ("after", lambda: store.add_user_turn(sid, "after")),
        )
    ]
    for t in threads:
        t.start()
        time.sleep(0.1)
    gate.set()
    for t in threads + [first]:
        t.join(10)
    assert isinstance(outcomes["bad"], StoreError) and "rolled back" in str(outcomes["bad"])
    assert {t["content"] for t in store.turns(sid)} == {"before", "after"}
    assert store.turn(outcomes["before"])["content"] == "before" and store.turn(outcomes["after"])["content"] == "after"


def test_a_live_owner_stays_alive_when_the_clock_is_set(monkeypatch):
    """psutil works a start time out from the wall clock on each call: when NTP set the clock of a fresh CI
    machine, this live process's own reply was taken for one left by a dead process. Start times are read
    from the kernel's count since boot, which setting the clock does not move."""
    import os

    import psutil

    from limachat import procs
    from limachat.dialogues.store import _alive, owner

    me = owner()
    monkeypatch.setattr(psutil, "boot_time", lambda: 0.0)  # as if the clock had been set back 56 years
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: 12.0)
    assert _alive(me)
    assert not _alive(f"{socket.gethostname()}:{os.getpid()}:{procs.started() + 5:.2f}"), "a reused pid"
    assert not _alive(f"{socket.gethostname()}:999999999:{procs.started():.2f}"), "no such process"
