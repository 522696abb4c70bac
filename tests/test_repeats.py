"""A reply that gives back an earlier reply instead of answering: the measure, calibrated on real
replies of the demo checkpoints; stored per reply; upgraded databases scored; a rate per checkpoint
in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from limachat.dialogues import report as rep
from limachat.dialogues.repeats import REPEAT_AT, is_repeat, repeat_share
from limachat.dialogues.store import Store

DATA = Path(__file__).parent / "data"


def cases(kind: str) -> list[dict]:
    return json.loads((DATA / "repeats.json").read_text())[kind]


@pytest.mark.parametrize("case", cases("repeats"), ids=lambda c: c["source"])
def test_real_repeats_are_flagged(case):
    """Replies that gave back an earlier reply: the demo checkpoints and the base on the held-out
    follow-ups, preset `focused` with LIMA's penalty on the reply's own tokens only (the old default)."""
    share = repeat_share(case["reply"], case["earlier"])
    assert is_repeat(share), f"{case['source']}: share {share:.2f} below {REPEAT_AT}"


@pytest.mark.parametrize("case", cases("followups"), ids=lambda c: c["source"])
def test_real_follow_ups_are_not(case):
    """Replies that answered the new question of the same conversations, on the same topic."""
    share = repeat_share(case["reply"], case["earlier"])
    assert share is not None and not is_repeat(share), f"{case['source']}: share {share:.2f}"


def test_hand_made_cases():
    assert repeat_share("Boil the eggs for ten minutes.", ["Boil the eggs for ten minutes."]) == 1.0
    assert repeat_share("Boil the eggs for ten minutes.", []) is None  # nothing earlier to repeat
    assert repeat_share("Yes.", ["Yes, boil them."]) is None  # under three words: nothing to compare
    half = repeat_share("one two three four five six", ["one two three four"])  # 2 of its 4 trigrams
    assert half == 0.5 and is_repeat(half) and not is_repeat(0.49) and not is_repeat(None)
    assert repeat_share("ONE, two; three!", ["one two three"]) == 1.0  # words, not punctuation or case


def _chat(store: Store, replies: list[str], checkpoint: str = "dialogue") -> list[str]:
    sid = store.start_session("chat")
    parent, ids = None, []
    for i, text in enumerate(replies):
        user = store.add_user_turn(sid, f"question {i}", parent_id=parent)
        tid = store.begin_assistant_turn(sid, user, checkpoint=checkpoint)
        store.finish_assistant_turn(tid, text)
        parent = tid
        ids.append(tid)
    return ids


def test_the_store_scores_every_finished_reply_against_its_own_branch(tmp_path):
    store = Store(tmp_path / "r.db")
    first = "Crack two eggs into a bowl and whisk them with a pinch of salt."
    ids = _chat(store, [first, first, "Wrap the bowl in a damp towel and use half power for thirty seconds."])
    share = [store.turn(t)["repeat"] for t in ids]
    assert share[0] is None and share[1] == 1.0 and share[2] < REPEAT_AT
    # Another session with the same text is another conversation: nothing repeated there.
    other = _chat(store, [first])
    assert store.turn(other[0])["repeat"] is None
    # A reply that broke off is not scored.
    sid = store.session(store.turn(ids[0])["session_id"])["id"]
    user = store.add_user_turn(sid, "again?", parent_id=ids[-1])
    broken = store.begin_assistant_turn(sid, user, checkpoint="dialogue")
    store.finish_assistant_turn(broken, first, status="error", error="the request failed")
    assert store.turn(broken)["repeat"] is None


def test_an_upgrade_from_schema_5_scores_the_replies_already_stored(tmp_path):
    from sqlite_utils import Database

    from limachat.dialogues import migrations as m

    db = Database(tmp_path / "v5.db")
    steps = [
        m.m001_initial,
        m.m002_sampling_and_fluency,
        m.m003_checks_owner_error_detail,
        m.m004_curation,
        m.m005_studies,
    ]
    for i, step in enumerate(steps, 1):
        step(db)
        db["_sqlite_migrations"].insert(
            {"id": i, "migration_set": "limachat", "name": step.__name__, "applied_at": "1"}, pk="id"
        )
    db["sessions"].insert({"id": "s", "created": "1", "mode": "chat"})
    text = "Keep the chain clean and oil it every few weeks."
    rows = [
        ("u1", None, "user", "q"),
        ("a1", "u1", "assistant", text),
        ("u2", "a1", "user", "q2"),
        ("a2", "u2", "assistant", text),
    ]
    for tid, parent, role, content in rows:
        db["turns"].insert(
            {
                "id": tid,
                "session_id": "s",
                "parent_id": parent,
                "role": role,
                "content": content,
                "status": "ok",
                "created": tid,
                "exchange": int(tid[1]),
            }
        )
    db.close()
    store = Store(tmp_path / "v5.db")
    assert (store.turn("a1")["repeat"], store.turn("a2")["repeat"]) == (None, 1.0)


def test_the_report_shows_each_checkpoints_repeat_rate(tmp_path):
    store = Store(tmp_path / "r.db")
    same = "Start with a ten minute walk and add one minute of jogging each week."
    _chat(store, [same, same, "Ice the knee for fifteen minutes and rest a day before the next run."], "zero-shot")
    _chat(store, [same, "Run three times a week, twenty minutes each time, with a rest day between."], "dialogue")
    report = rep.build(store)
    z, d = report.checkpoints["zero-shot"], report.checkpoints["dialogue"]
    assert (z.repeats, z.followups, d.repeats, d.followups) == (1, 2, 0, 1)
    md = rep.markdown(report)
    assert "| 50.0% (1/2) |" in md and "| 0.0% (0/1) |" in md and "Repeats:" in md
