"""History as a study condition (issue 24), without a model: scripted prompt sets, the plan under
`--history both`, a shared-history tree built by hand (which history each reply saw, the rule for each
tie), and the report's conditions and their difference against hand counts."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from click.testing import CliRunner

from limachat.cli import main
from limachat.demo import compare
from limachat.dialogues import bundled, stats
from limachat.dialogues import study as studies
from limachat.dialogues import study_report as srep
from limachat.dialogues.formats import FormatError, load_prompts
from limachat.dialogues.preference import pairs
from limachat.dialogues.store import Store

E, P, F = "excellent", "pass", "fail"
CKS = ["zero-shot", "dialogue"]


# -- scripted prompt sets ---------------------------------------------------------------------------------
def test_a_prompt_set_line_may_carry_scripted_turns_and_reference_replies(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"id": "x", "prompt": "Hi?", "turns": ["And then?", "Why?"], "replies": ["Hello.", "Then this."]}\n'
        '{"prompt": "Plain."}\n'
    )
    assert load_prompts(path) == [
        {"id": "x", "prompt": "Hi?", "turns": ["And then?", "Why?"], "replies": ["Hello.", "Then this."]},
        {"id": "p02", "prompt": "Plain."},
    ]
    for bad, key in (
        ('"turns": "And then?"', "turns"),
        ('"turns": ["ok", ""]', "turns"),
        ('"replies": [3]', "replies"),
    ):
        path.write_text('{"prompt": "ok"}\n{"prompt": "Hi?", ' + bad + "}\n")
        with pytest.raises(FormatError, match=rf'^{path}:2: "{key}" must be a list of non-empty strings$'):
            load_prompts(path)


def test_the_bundled_scripted_set_is_twelve_three_turn_conversations_of_its_own():
    items = load_prompts(bundled("scripted.jsonl"))
    assert len(items) >= 10 and len({p["id"] for p in items}) == len(items)
    assert all(len(p["turns"]) == 2 and len(p["replies"]) == 2 for p in items)  # 3 user turns, 2 reference replies
    trained = bundled("train.jsonl").read_text() + bundled("heldout.jsonl").read_text()
    others = bundled("prompts.jsonl").read_text() + bundled("followups.jsonl").read_text()
    for p in items:
        for text in [p["prompt"], *p["turns"], *p["replies"]]:
            assert json.dumps(text)[1:-1] not in trained + others, text  # written for this set alone


# -- the plan -------------------------------------------------------------------------------------------
def test_history_both_plans_every_conversation_under_each_condition_in_a_random_order(tmp_path):
    store = Store(tmp_path / "s.db")
    st = studies.create(
        store, "h", CKS, prompts="scripted", conversations=4, turns=3, history="both", annotators=["ana", "bo"]
    )
    assert (st["history"], st["history_rule"], st["prompt_set"]) == ("both", "verdict", "scripted")
    orders = {}
    for who in ("ana", "bo"):
        walk = studies.plan(st, who)
        assert len(walk) == 8  # 4 conversations of each checkpoint (a slot holds one of each), under each history
        assert Counter(s.history for s in walk) == {"own": 4, "shared": 4}
        by_prompt = Counter((s.prompt_id, s.history) for s in walk)
        assert all(by_prompt[(p, "own")] == by_prompt[(p, "shared")] for p, _ in by_prompt)  # the same prompts
        assert all(s.turns and s.scripted(2) == s.turns[0] and s.scripted(4) is None for s in walk)
        orders[who] = [s.history for s in walk]
    # each annotator's own order of the conditions (not all of one first), and different between them
    assert all(o != sorted(o) and o != sorted(o, reverse=True) for o in orders.values())
    assert orders["ana"] != orders["bo"]
    # sides are drawn per conversation and condition: the blind draw holds in both
    sides = Counter((s.history, s.sides["a"]) for s in studies.plan(st, "ana"))
    assert all(sides[(h, c)] for h in ("own", "shared") for c in CKS), sides
    own = studies.create(store, "o", CKS, conversations=4, turns=3)
    assert {s.history for s in studies.plan(own, "ana")} == {"own"} and len(studies.plan(own, "ana")) == 4


def test_bad_history_settings_say_which_and_why(tmp_path):
    store = Store(tmp_path / "s.db")
    with pytest.raises(ValueError, match="^history: one of own, shared, both, not 'mixed'$"):
        studies.create(store, "h", CKS, history="mixed")
    with pytest.raises(ValueError, match="^history rule reference: prompt set bundled needs 2 scripted turns"):
        studies.create(store, "h", CKS, history="shared", history_rule="reference")  # the bundled 10 have none
    result = CliRunner().invoke(main, ["study", "create", "h", "--checkpoints", "a,b", "--history", "x"])
    assert result.exit_code == 2 and "Invalid value for '--history'" in result.output


# -- a shared-history tree, built by hand -------------------------------------------------------------------
def reply(store: Store, sid: str, user: str, lane: str, text: str, checkpoint: str, status: str = "ok") -> str:
    t = store.begin_assistant_turn(sid, user, checkpoint=checkpoint, lane=lane)
    store.finish_assistant_turn(t, text, status=status, error="boom" if status == "error" else None)
    return t


def test_a_shared_history_continues_from_the_preferred_reply_and_from_a_on_a_tie(tmp_path):
    store = Store(tmp_path / "s.db")
    lanes = {"a": "zero-shot", "b": "dialogue"}
    studies.create(store, "t", CKS, history="shared")
    sid = store.start_session("blind", annotator="ana", meta={"lanes": lanes, "history": "shared"}, study="t", slot=0)
    state = {**compare.blank(), "session": sid, "names": lanes, "blind": True, "history": "shared"}

    def exchange(text: str, parents: dict) -> dict:
        users = {lane: store.add_user_turn(sid, text, parent_id=parents[lane], lane=lane) for lane in "ab"}
        out = {lane: reply(store, sid, users[lane], lane, f"{lane.upper()} says {text}", lanes[lane]) for lane in "ab"}
        state.update(a=[users["a"], out["a"]], b=[users["b"], out["b"]])
        return out

    r1 = exchange("q1", {"a": None, "b": None})
    with pytest.raises(ValueError, match="give your verdict on this exchange first"):
        compare.continued_from(store, state, "ana")
    store.verdict(sid, r1["a"], r1["b"], "b", "bo")  # another annotator's verdict is not this one's
    with pytest.raises(ValueError, match="give your verdict"):
        compare.continued_from(store, state, "ana")
    store.verdict(sid, r1["a"], r1["b"], "b", "ana")
    assert compare.continued_from(store, state, "ana") == r1["b"]  # B preferred: both continue from B's reply
    r2 = exchange("q2", {"a": r1["b"], "b": r1["b"]})
    store.verdict(sid, r2["a"], r2["b"], "tie", "ana")
    assert compare.continued_from(store, state, "ana") == r2["a"]  # a tie: side A's
    r3 = exchange("q3", {"a": r2["a"], "b": r2["a"]})
    store.verdict(sid, r3["a"], r3["b"], "a", "ana")
    assert compare.continued_from(store, state, "ana") == r3["a"]

    # which history each reply saw: what the model was sent for it
    def seen(turn: str) -> list[str]:
        return [m["content"] for m in store.messages(store.turn(turn)["parent_id"])]

    assert seen(r2["a"]) == seen(r2["b"]) == ["q1", "B says q1", "q2"]
    assert seen(r3["a"]) == seen(r3["b"]) == ["q1", "B says q1", "q2", "A says q2", "q3"]
    # each side's conversation is still its own replies, one per exchange
    [row] = store.study_sessions("t")
    assert [t["id"] for t in store.lane_replies(row, "a")] == [r1["a"], r2["a"], r3["a"]]
    assert [t["id"] for t in store.lane_replies(row, "b")] == [r1["b"], r2["b"], r3["b"]]
    # the same history on both sides makes every exchange's verdict a preference pair (own histories: only the first)
    found = [p for p in pairs(store, dedupe=True) if p["limachat"]["source"] == "verdict"]  # bo and ana agree on r1
    assert [(p["limachat"]["chosen_turn"], p["limachat"]["rejected_turn"]) for p in found] == [
        (r1["b"], r1["a"]),
        (r3["a"], r3["b"]),
    ]  # the tie gives none

    # a failed reply is nothing to continue from
    r4 = exchange("q4", {"a": r3["a"], "b": r3["a"]})
    failed = reply(store, sid, state["b"][0], "b", "", "dialogue", status="error")
    state["b"] = [state["b"][0], failed]
    store.verdict(sid, r4["a"], failed, "a", "ana")
    with pytest.raises(ValueError, match="Both sides need a finished reply"):
        compare.continued_from(store, state, "ana")


def test_the_reference_rule_continues_from_the_prompt_sets_reply(tmp_path):
    store = Store(tmp_path / "s.db")
    st = studies.create(
        store, "r", CKS, prompts="scripted", conversations=1, turns=3, history="shared", history_rule="reference"
    )
    slot = studies.plan(st, "ana")[0]
    sid = store.start_session(
        "blind", annotator="ana", meta={"lanes": slot.sides, "history": "shared"}, study="r", slot=slot.index
    )
    users = {lane: store.add_user_turn(sid, slot.prompt, lane=lane) for lane in "ab"}
    out = {lane: reply(store, sid, users[lane], lane, f"{lane} one", slot.sides[lane]) for lane in "ab"}
    state = {
        **compare.blank(), "session": sid, "names": slot.sides, "history": "shared", "rule": "reference",
        "study": "r", "slot": slot.index, "a": [users["a"], out["a"]], "b": [users["b"], out["b"]],
    }  # fmt: skip
    user, text = compare.continued_from(store, state, "ana")  # no verdict needed
    assert (user, text) == (users["a"], slot.replies[0])
    ref = store.add_reference_turn(sid, user, text)
    assert store.turn(ref)["checkpoint"] == "reference" and store.turn(ref)["lane"] is None
    nxt = store.add_user_turn(sid, slot.turns[0], parent_id=ref, lane="b")
    assert [m["content"] for m in store.messages(nxt)] == [slot.prompt, slot.replies[0], slot.turns[0]]


# -- the report: each condition, and their difference ----------------------------------------------------------
def conversation(store: Store, study: str, slot: int, history: str, labels: dict[str, list[str]]) -> None:
    """One study conversation of zero-shot (lane a) against dialogue (lane b), labelled by ana; under a
    shared history each next question follows the better-labelled reply (A's on a tie), by ana's verdict."""
    lanes = {"a": "zero-shot", "b": "dialogue"}
    sid = store.start_session(
        "blind", annotator="ana", meta={"lanes": lanes, "history": history}, study=study, slot=slot
    )
    state = {**compare.blank(), "session": sid, "names": lanes, "history": history}
    parents = {"a": None, "b": None}
    for k, (la, lb) in enumerate(zip(labels["a"], labels["b"])):
        users = {lane: store.add_user_turn(sid, f"q{k}", parent_id=parents[lane], lane=lane) for lane in "ab"}
        out = {lane: reply(store, sid, users[lane], lane, f"{lane}{k}", lanes[lane]) for lane in "ab"}
        store.rate(out["a"], "ana", la)
        store.rate(out["b"], "ana", lb)
        rank = {F: 0, P: 1, E: 2}
        store.verdict(
            sid, out["a"], out["b"], "b" if rank[lb] > rank[la] else "a" if rank[la] > rank[lb] else "tie", "ana"
        )
        state.update(a=[users["a"], out["a"]], b=[users["b"], out["b"]])
        if history == "shared":
            parents = dict.fromkeys("ab", compare.continued_from(store, state, "ana"))
        else:
            parents = out


def test_the_report_gives_each_history_and_how_much_of_the_gain_the_history_explains(tmp_path):
    store = Store(tmp_path / "s.db")
    studies.create(store, "both", CKS, conversations=2, turns=3, history="both")
    # own history: zero-shot 1 of 6 excellent, dialogue 5 of 6: a gap of 4/6
    conversation(store, "both", 0, "own", {"a": [E, F, F], "b": [E, E, E]})
    conversation(store, "both", 1, "own", {"a": [P, F, F], "b": [E, E, P]})
    # shared history: zero-shot 2 of 6, dialogue 4 of 6: a gap of 2/6; the history explains 2/6, half the gain
    conversation(store, "both", 2, "shared", {"a": [E, P, F], "b": [E, E, P]})
    conversation(store, "both", 3, "shared", {"a": [E, P, P], "b": [E, P, E]})
    report = srep.build(store, "both")
    by = {h: {s.checkpoint: s for s in sides} for h, sides in report.by_history.items()}
    assert by["own"]["zero-shot"].shares[E].value == pytest.approx(1 / 6)
    assert by["own"]["dialogue"].shares[E].value == pytest.approx(5 / 6)
    assert by["shared"]["zero-shot"].shares[E].value == pytest.approx(2 / 6)
    assert by["shared"]["dialogue"].shares[E].value == pytest.approx(4 / 6)
    [effect] = report.history_effects
    assert (effect.own.value, effect.shared.value, effect.explained.value) == pytest.approx((4 / 6, 2 / 6, 2 / 6))
    assert effect.explained.low <= effect.explained.value <= effect.explained.high
    assert "about 50% of the gain" in effect.words()
    assert {s.checkpoint: len(s.conversations) for s in report.sides} == {"zero-shot": 4, "dialogue": 4}  # pooled
    text = srep.markdown([report])
    assert "### Labels per history" in text and "### How much of the gain the history explains" in text
    assert "| own | dialogue | 2 | 6 |" in text and "| shared | zero-shot | 2 | 6 |" in text
    rows = srep.to_csv([report]).splitlines()
    assert rows[0].endswith(",history") and sum(r.endswith(",shared") for r in rows) == 6  # 2 checkpoints x 3 labels
    assert len(srep.figure([report])) > 10_000  # the history row drawn beside the usual one


def test_the_difference_of_differences_by_hand():
    own = ([[F, F], [F, E]], [[E, E], [E, P]])  # gap 3/4 - 1/4
    shared = ([[E, P], [F, P]], [[E, P], [P, E]])  # gap 2/4 - 1/4
    d = stats.difference_of_differences(*own, *shared, label=E)
    assert d.value == pytest.approx(0.5 - 0.25)
    assert d.low <= d.value <= d.high
    assert math.isnan(stats.difference_of_differences(*own, [], [], label=E).value)  # one condition unrated
