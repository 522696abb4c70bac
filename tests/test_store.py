"""The SQLite store: schema, the turn tree, ratings with history, threads, and crash safety."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from limachat.dialogues.migrations import migrations
from limachat.dialogues.store import Store, StoreError


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "lima.db")


def test_blank_database_gets_the_whole_schema(tmp_path):
    path = tmp_path / "new.db"
    store = Store(path)
    assert {m.name for m in migrations.applied(store.db)} == {"m001_initial", "m002_sampling_and_fluency"}
    assert not migrations.pending(store.db)
    conn = sqlite3.connect(path)  # any SQLite tool can open it
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"sessions", "turns", "ratings", "edits", "verdicts"} <= tables
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    Store(path)  # opening again applies nothing twice
    assert [m.name for m in migrations.applied(store.db)] == ["m001_initial", "m002_sampling_and_fluency"]
    assert {"preset", "omitted", "fluency"} <= set(store.db["turns"].columns_dict)


def test_upgrade_from_the_first_schema_keeps_turns(tmp_path):
    from sqlite_utils import Database

    from limachat.dialogues.migrations import m001_initial

    path = tmp_path / "old.db"
    old = Database(path)
    m001_initial(old)
    old["sessions"].insert({"id": "s1", "created": "2026-01-01", "mode": "chat"})
    old["turns"].insert({"id": "t1", "session_id": "s1", "role": "user", "content": "hi", "status": "ok", "created": "2026-01-01"})
    old["_sqlite_migrations"].insert({"id": 1, "migration_set": "limachat", "name": "m001_initial", "applied_at": "2026-01-01"}, pk="id")
    old.close()
    store = Store(path)
    assert store.turn("t1")["content"] == "hi" and store.turn("t1")["fluency"] is None


def test_a_conversation_with_branches(store):
    sid = store.start_session("chat", annotator="ana")
    u1 = store.add_user_turn(sid, "Plan a trip to Porto")
    a1 = store.begin_assistant_turn(sid, u1, checkpoint="dialogue", model="dialogue", endpoint="http://x/v1",
                                    params={"temperature": 0.7})
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
    assert store.messages(u2) == [{"role": "user", "content": "Plan a trip to Porto"},
                                  {"role": "assistant", "content": "Day 1: Ribeira."},
                                  {"role": "user", "content": "And day 2?"}]
    t = store.turn(a1)
    assert (t["params"], t["prompt_tokens"], t["completion_tokens"], t["ttft"], t["latency"], t["status"]) == (
        {"temperature": 0.7}, 30, 5, 0.2, 1.5, "ok")
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


@pytest.mark.parametrize("call, message", [
    (lambda s, sid, u, a: s.rate(a, "ana", "great"), "label must be one of fail, pass, excellent, not 'great'"),
    (lambda s, sid, u, a: s.rate(u, "ana", "pass"), "only assistant turns are rated"),
    (lambda s, sid, u, a: s.add_user_turn(sid, "   "), "a user turn needs some text"),
    (lambda s, sid, u, a: s.add_user_turn(sid, "x", parent_id=u), "a user turn cannot follow a user turn"),
    (lambda s, sid, u, a: s.start_session("party"), "mode must be one of"),
    (lambda s, sid, u, a: s.turn("nope"), "no turn 'nope'"),
])
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
    assert check.execute("select count(*) from turns where status = 'ok' and role = 'assistant'").fetchone()[0] == len(written)


KILLED_WRITER = """
import sys, time
from limachat.dialogues.store import Store
store = Store(sys.argv[1])
sid = store.start_session()
i = 0
while True:
    u = store.add_user_turn(sid, f"q{i}")
    print(u, flush=True)  # printed only after the commit
    i += 1
"""


def test_killing_a_writer_leaves_a_sound_database_with_every_commit(tmp_path):
    path = tmp_path / "killed.db"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 300 and time.monotonic() < deadline:
        committed.append(proc.stdout.readline().strip())
    proc.kill()  # SIGKILL, mid-write
    proc.wait()
    committed += [line.strip() for line in proc.stdout if line.strip()]
    conn = sqlite3.connect(path)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    present = {r[0] for r in conn.execute("select id from turns")}
    assert len(committed) >= 300 and set(committed) <= present


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
