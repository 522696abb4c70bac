"""A team's study without the app: agreement between people against hand-computed figures, a split plan,
the queue a co-rater walks, adjudication, reasons, whole-conversation verdicts, and how many
conversations a study needs."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import pytest
from click.testing import CliRunner
from test_report import conversation

from limachat.cli import main
from limachat.dialogues import queues, stats
from limachat.dialogues import report as rep
from limachat.dialogues import study as studies
from limachat.dialogues import study_report as srep
from limachat.dialogues.agreement import people_agreement
from limachat.dialogues.export import Filters, chains, training_record
from limachat.dialogues.store import Store, StoreError

E, P, F = "excellent", "pass", "fail"


# -- agreement between people, by hand -------------------------------------------------------------------
def test_agreement_between_two_people_by_hand():
    # ana: F P E E P, bo: F P E P E, over turns in three conversations.
    # Raw: 3 of 5 = 60%. Unweighted kappa: p_e = (1*1 + 2*2 + 2*2) / 25 = 0.36, (0.6 - 0.36) / 0.64 = 0.375.
    # Linear-weighted kappa (weights |i - j| / 2): observed disagreement (0.5 + 0.5) / 5 = 0.2; expected, from
    # the margins (0.2, 0.4, 0.4) both sides, 0.40; 1 - 0.2 / 0.4 = 0.5.
    # Tie-discounted: 3 equal + 2 one step apart (half each) = 4 / 5 = 80%.
    # Krippendorff's alpha (ordinal): pooled values n0 = 2, n1 = 4, n2 = 4; squared distances d01 = 9,
    # d12 = 16, d02 = 49; D_o = (2 * 16 + 2 * 16) / 10 = 6.4; D_e = 2 * (2*4*9 + 2*4*49 + 4*4*16) / 90 = 16;
    # alpha = 1 - 6.4 / 16 = 0.6.
    turns = ["t1", "t2", "t3", "t4", "t5"]
    ana = dict(zip(turns, [F, P, E, E, P]))
    bo = dict(zip(turns, [F, P, E, P, E]))
    got = people_agreement({"ana": ana, "bo": bo}, {"t1": "c1", "t2": "c1", "t3": "c2", "t4": "c2", "t5": "c3"})
    [pair] = got.pairs
    assert (pair.a, pair.b, pair.turns) == ("ana", "bo", 5)
    assert pair.agreement == pytest.approx(0.6)
    assert pair.kappa == pytest.approx(0.375)
    assert pair.weighted_kappa == pytest.approx(0.5)
    assert pair.tie_discounted == pytest.approx(0.8)
    assert pair.confusion == Counter({(F, F): 1, (P, P): 1, (E, E): 1, (E, P): 1, (P, E): 1})
    assert got.alpha.value == pytest.approx(0.6) and (got.raters, got.turns, got.conversations) == (2, 5, 3)
    assert got.alpha.low <= 0.6 <= got.alpha.high  # resampled over the three conversations
    again = people_agreement({"ana": ana, "bo": bo}, {"t1": "c1", "t2": "c1", "t3": "c2", "t4": "c2", "t5": "c3"})
    assert again.alpha == got.alpha  # the interval's resamples are seeded
    same = people_agreement({"ana": {"t1": P}, "bo": {"t1": P}}, {})
    assert same.alpha is None and same.pairs[0].weighted_kappa is None  # one label only: nothing to correct


def test_three_people_alpha_counts_every_pair_and_missing_ratings():
    # Three raters, one of them missing a turn: alpha takes what is there (krippendorff's nan handling).
    a = {"t1": E, "t2": P, "t3": F, "t4": E}
    b = {"t1": E, "t2": P, "t3": F, "t4": P}
    c = {"t1": E, "t2": F, "t3": F}
    got = people_agreement({"a": a, "b": b, "c": c}, {t: t for t in a})
    assert [(p.a, p.b, p.turns) for p in got.pairs] == [("a", "b", 4), ("a", "c", 3), ("b", "c", 3)]
    assert got.raters == 3 and got.turns == 4 and 0 < got.alpha.value < 1


# -- a split study ---------------------------------------------------------------------------------------
def split_study(store: Store, people=("ana", "bo", "cy"), conversations=2, k=2) -> dict:
    return studies.create(
        store,
        "team",
        ["zero-shot", "dialogue"],
        conversations=conversations,
        turns=2,
        annotators=list(people),
        raters_per_conversation=k,
        adjudicators=["cy"],
        seed=4,
    )


def drive(store: Store, st: dict, a: studies.Assignment, labels: dict[str, list[str]]) -> dict[str, list[str]]:
    """The driver's conversation: both lanes answered and rated by the driver."""
    sid = store.start_session(
        "compare", annotator=a.driver, study=st["name"], slot=a.slot.index, meta={"lanes": a.slot.sides}
    )
    return {ln: conversation(store, c, labels[c], a.driver, sid, ln)[1] for ln, c in a.slot.sides.items()}


def test_a_split_plan_evens_the_work_and_every_pair_shares_conversations(tmp_path):
    store = Store(tmp_path / "s.db")
    five = studies.create(
        store, "five", ["zero-shot", "dialogue"], conversations=10, annotators=list("abcde"), raters_per_conversation=2
    )
    split = studies.assignments(five)
    assert len(split) == 10 and all(a.driver in a.raters and len(set(a.raters)) == 2 for a in split)
    assert Counter(a.driver for a in split) == dict.fromkeys("abcde", 2)
    assert Counter(p for a in split for p in a.raters) == dict.fromkeys("abcde", 4)
    assert Counter(q for a in split for q in combinations(a.raters, 2)) == dict.fromkeys(combinations("abcde", 2), 1)
    assert studies.assignments(five) == split  # seeded
    assert sorted(s.index for p in "abcde" for s in studies.plan(five, p)) == list(range(10))  # each driven once
    assert studies.assignments(studies.create(store, "all", ["x", "y"])) == []  # the default: everyone walks all
    with pytest.raises(ValueError, match="raters per conversation: a whole number from 1 to the number of annotators"):
        studies.create(store, "bad", ["x", "y"], annotators=["a", "b"], raters_per_conversation=3)
    with pytest.raises(ValueError, match="list the annotators"):
        studies.create(store, "bad", ["x", "y"], raters_per_conversation=1)


def test_a_co_rater_walks_the_shared_queue_and_the_board_counts_it(tmp_path):
    store = Store(tmp_path / "q.db")
    st = split_study(store)
    split = studies.assignments(st)
    assert [s["name"] for s in store.queues()] == ["team-shared"]
    queue = store.queue("team-shared")
    assert queue["needs"] == 2 and queue["study"] == "team"
    first = split[0]
    other = next(p for p in first.raters if p != first.driver)
    outsider = next(p for p in st["annotators"] if p not in first.raters)
    assert queues.next_item(store, queue, other) is None  # nothing driven yet
    ids = drive(store, st, first, {"zero-shot": [P, F], "dialogue": [E, P]})
    replies = [t for ln in ("a", "b") for t in ids[ln]]
    item = queues.next_item(store, queue, other)
    assert item.turn_id in replies and (item.place, item.total) == (1, 4) and item.labels == {}  # nobody's shown
    assert queues.next_item(store, queue, first.driver) is None  # the driver rated these in Compare
    assert queues.next_item(store, queue, outsider) is None  # not one of this conversation's raters
    walked = []
    while (item := queues.next_item(store, queue, other)) is not None:
        store.rate(item.turn_id, other, P)
        walked.append(item.turn_id)
    assert sorted(walked) == sorted(replies)
    s = queues.status(store, queue)
    assert (s["items"], s["done"], s["by annotator"]) == (4, 4, {first.driver: 4, other: 4})
    board = {(r["annotator"], r["checkpoint"]): r for r in studies.progress(store, st)}
    assert board[(other, "dialogue")]["replies rated"].startswith("2 / ")  # the shared replies count for them
    assert board[(first.driver, "dialogue")]["conversations done"] == "1 / 1"


def test_adjudication_settles_a_disagreement_and_reports_take_it(tmp_path):
    store = Store(tmp_path / "a.db")
    st = split_study(store)
    first = studies.assignments(st)[0]
    other = next(p for p in first.raters if p != first.driver)
    ids = drive(store, st, first, {"zero-shot": [P, P], "dialogue": [E, E]})
    disputed = ids[next(ln for ln, c in first.slot.sides.items() if c == "zero-shot")][0]
    for ln in ("a", "b"):
        for t in ids[ln]:
            store.rate(
                t, other, F if t == disputed else store.current_labels(store.turn(t)["session_id"], first.driver)[t]
            )
    with pytest.raises(ValueError, match="an adjudication queue names who may adjudicate"):
        queues.create(store, "fix", "disagree", purpose="adjudicate")
    fix = queues.create(store, "fix", "disagree", purpose="adjudicate", study="team")
    assert fix["adjudicators"] == ["cy"] and store.queue_items("fix") == [disputed]
    with pytest.raises(ValueError, match="may not adjudicate queue 'fix'"):
        queues.may_work(fix, first.driver if first.driver != "cy" else other)
    item = queues.next_item(store, fix, "cy")
    assert item.turn_id == disputed and {w: lab for w, (lab, _) in item.labels.items()} == {first.driver: P, other: F}
    store.adjudicate(disputed, "cy", P, "it answers the question")
    assert queues.next_item(store, fix, "cy") is None and queues.status(store, fix)["done"] == 1
    assert store.annotator_kinds()["adjudicator/cy"] == "adjudicator"
    assert store.lowest_labels(raters="humans")[disputed] == F  # the others' labels stay, the lowest wins
    assert store.lowest_labels(raters="adjudicated")[disputed] == P  # the final label where there is one
    assert "adjudicator/cy" not in {p.a for p in rep.build(store, "adjudicated").agreement.pairs}
    adjudicated = rep.build(store, "adjudicated").checkpoints["zero-shot"].counts
    assert adjudicated == Counter({P: 2}) and rep.build(store).checkpoints["zero-shot"].counts == Counter({P: 1, F: 1})
    sides = {s.checkpoint: s.conversations for s in srep.build(store, "team", "adjudicated").sides}
    assert sides == {"zero-shot": [[P, P]], "dialogue": [[E, E]]}  # the study report takes it too


def test_reasons_are_stored_shown_exported_and_listed_under_why_replies_failed(tmp_path):
    store = Store(tmp_path / "r.db")
    _, ids = conversation(store, "zero-shot", [F, E], annotator="ana")
    with pytest.raises(StoreError, match="Rate the reply first"):
        store.set_reason(ids[0], "bo", "too long")
    store.set_reason(ids[0], "ana", "  gives the   wrong year\t")
    assert store.reason(ids[0], "ana") == "gives the wrong year"
    with pytest.raises(StoreError, match="at most 300 characters"):
        store.set_reason(ids[0], "ana", "x" * 301)
    [chain] = chains(store, Filters())
    record = training_record(chain, "messages")
    assert record["limachat"]["reasons"] == ["ana: gives the wrong year", ""]
    report = rep.build(store)
    assert report.why_failed == {"zero-shot": [("ana", "gives the wrong year")]}
    assert "- zero-shot: gives the wrong year (ana)" in rep.markdown(report)
    store.rate(ids[0], "ana", P)  # a new label starts without a reason
    assert (
        store.reason(ids[0], "ana") is None
        and "reasons" not in training_record(next(chains(store)), "lima")["limachat"]
    )


def test_whole_conversation_verdicts_decide_outcomes_and_the_report_says_so(tmp_path):
    store = Store(tmp_path / "v.db")
    st = studies.create(store, "s", ["zero-shot", "dialogue"], conversations=2, turns=1, seed=0)
    sessions = []
    for n in range(2):
        sides = {"a": "zero-shot", "b": "dialogue"}
        sid = store.start_session("compare", annotator="ana", study="s", slot=n, meta={"lanes": sides})
        ids = {ln: conversation(store, c, [P], "ana", sid, ln)[1] for ln, c in sides.items()}
        store.verdict(sid, ids["a"][0], ids["b"][0], "a", "ana")  # each exchange: zero-shot better
        sessions.append(sid)
    store.conversation_verdict(sessions[0], "ana", "b")  # but over the whole conversation, dialogue
    with pytest.raises(StoreError, match="verdict must be one of a, b, tie"):
        store.conversation_verdict(sessions[0], "ana", "left")
    report = srep.build(store, st["name"])
    assert report.outcomes == {("zero-shot", "dialogue"): {"zero-shot": 1, "dialogue": 1, "tie": 0}}
    assert report.bases == Counter({"conversation": 1, "exchanges": 1})
    md = srep.markdown([report])
    assert "whole-conversation verdicts for 1; the majority of exchange verdicts for 1" in md
    winners = {w["session"]: w for w in rep.build(store).winners}
    assert winners[sessions[0]]["winner"] == "dialogue" and winners[sessions[0]]["basis"].startswith("conversation")


# -- how many conversations are enough ---------------------------------------------------------------------
def test_conversations_needed_is_few_for_a_large_effect_and_none_for_no_effect():
    big = stats.conversations_needed([[F, F, P]] * 5, [[E, E, E]] * 4 + [[E, P, E]], names=("zero-shot", "dialogue"))
    assert big.per_checkpoint <= 3 and big.more == 0 and "are enough" in big.line()
    pilot = [[E, P, F], [F, F, P], [E, E, P], [P, F, F], [E, P, P]]
    none = stats.conversations_needed(pilot, pilot)
    assert none.per_checkpoint is None and "shows no gap" in none.line()
    small = stats.conversations_needed(pilot, pilot[:4] + [[E, E, P]])
    medium = stats.conversations_needed(pilot, [[E, E, P], [E, F, P], [E, E, E], [P, E, F], [E, P, E]])
    assert small.per_checkpoint > medium.per_checkpoint > big.per_checkpoint  # a smaller gap needs more
    assert small.more == small.per_checkpoint - 5 and "more conversations per checkpoint" in small.line()
    assert stats.conversations_needed(pilot, pilot[:4] + [[E, E, P]]) == small  # seeded
    assert "too few" in stats.conversations_needed([[E]], [[F]]).line()


# -- the CLI -------------------------------------------------------------------------------------------------
def test_cli_queue_and_split_study(tmp_path, clean_env):
    store = Store(tmp_path / "limachat.db")
    st = split_study(store)
    first = studies.assignments(st)[0]
    ids = drive(store, st, first, {"zero-shot": [P, F], "dialogue": [E, P]})
    failed = ids[next(ln for ln, c in first.slot.sides.items() if c == "zero-shot")][1]
    store.close()
    env = {"LIMACHAT_HOME": str(tmp_path)}
    run = CliRunner().invoke
    out = run(main, ["report", "--raters", "adjudicated"], env=env)
    assert out.exit_code == 0 and "| zero-shot | 2 | 50.0% | 50.0% | 0.0% |" in out.output, out.output
    store = Store(tmp_path / "limachat.db")
    store.adjudicate(failed, "cy", P)
    store.close()
    out = run(main, ["report", "--raters", "adjudicated"], env=env)
    assert "| zero-shot | 2 | 0.0% | 100.0% | 0.0% |" in out.output, out.output
    out = run(main, ["report", "--study", "team"], env=env)
    assert (
        out.exit_code == 0 and "## Rated by people, adjudicated" in out.output and "## Rated by people\n" in out.output
    )
    out = run(main, ["queue", "status", "team-shared", "--items"], env=env)
    assert out.exit_code == 0, out.output
    assert "queue team-shared (rate, study): 0 of 4 replies with their 2 ratings" in out.output
    assert f"{first.driver}: pass" in out.output
    out = run(main, ["queue", "create", "more", "--source", "one-rater", "--needs", "3"], env=env)
    assert out.exit_code == 0 and "queue more (rate, one-rater): 0 of 4 replies with their 3 ratings" in out.output
    out = run(main, ["study", "status", "team"], env=env)
    assert (
        out.exit_code == 0
        and "| annotator | checkpoint |" in out.output
        and "dialogue vs zero-shot: too few" in out.output
    )
    out = run(main, ["queue", "create", "x", "--source", "disagree", "--checkpoint", "dialogue"], env=env)
    assert (
        out.exit_code == 1 and "--source disagree takes no export filters but --study; drop --checkpoint" in out.output
    )


# -- the app's handlers (the browser test drives the same through the page) ---------------------------------
def test_queue_tab_walks_labels_gives_reasons_and_adjudicates(tmp_path):
    from limachat.demo import queue as qtab
    from limachat.demo.answer import Deps
    from limachat.settings import Settings

    store = Store(tmp_path / "h.db")
    deps = Deps(store, {}, Settings(home=tmp_path))
    st = split_study(store)
    first = studies.assignments(st)[0]
    other = next(p for p in first.raters if p != first.driver)
    ids = drive(store, st, first, {"zero-shot": [P, F], "dialogue": [E, P]})
    state = {**qtab.blank(), "queue": "team-shared"}
    state, v, caption, others, progress = qtab.show(deps, state, other)
    assert v.ids[-1] == state["item"] and v.history[-1]["role"] == "assistant" and len(v.history) == 2
    assert "reply 1 of 4" in caption and others == "" and "0 of 4 replies" in progress
    with pytest.raises(ValueError, match="Label a reply first"):
        qtab.reason(deps, state, "why", other)
    labelled = []
    for label in (F, P, E, P):
        labelled.append(state["item"])
        state = qtab.rate(deps, state, label, other)
        state, v, caption, others, progress = qtab.show(deps, state, other)
    assert state["item"] is None and "Nothing left for you" in caption and "4 of 4 replies" in progress
    assert sorted(labelled) == sorted(ids["a"] + ids["b"])
    assert "Reason saved" in qtab.reason(deps, state, "misses the point", other)
    assert store.reason(labelled[-1], other) == "misses the point"
    made = qtab.create(deps, "settle", "disagree", "team", None, True, "")
    assert made == "Created queue settle (adjudicate, disagree): 0 of 2 replies settled; by annotator: nobody yet"
    with pytest.raises(ValueError, match="may not adjudicate"):
        qtab.show(deps, {**qtab.blank(), "queue": "settle"}, other if other != "cy" else first.driver)
    settle, v, caption, others, _ = qtab.show(deps, {**qtab.blank(), "queue": "settle"}, "cy")
    assert "(adjudicate)" in caption and f"**{first.driver}**:" in others and f"**{other}**:" in others
    settle = qtab.rate(deps, settle, P, "cy")
    assert store.annotator_kinds()["adjudicator/cy"] == "adjudicator"
    assert store.lowest_labels(raters="adjudicated")[settle["last"]] == P
    assert qtab.show(deps, settle, "cy")[4].endswith("1 of 2 replies settled; by annotator: adjudicator/cy: 1")


def test_a_backup_keeps_reasons_adjudications_and_whole_conversation_verdicts(tmp_path):
    from limachat.dialogues.formats import dumps, import_file, session_records

    store = Store(tmp_path / "b.db")
    sid = store.start_session("compare", annotator="ana", meta={"lanes": {"a": "zero-shot", "b": "dialogue"}})
    ids = {ln: conversation(store, c, [P], "ana", sid, ln)[1][0] for ln, c in (("a", "zero-shot"), ("b", "dialogue"))}
    store.rate(ids["a"], "bo", F)
    store.set_reason(ids["a"], "bo", "off topic")
    store.adjudicate(ids["a"], "cy", P, "on topic after all")
    store.conversation_verdict(sid, "ana", "a")
    store.conversation_verdict(sid, "ana", "tie")  # the newer one stands
    backup = tmp_path / "backup.jsonl"
    backup.write_text("".join(dumps(r) + "\n" for r in session_records(store)))
    again = Store(tmp_path / "again.db")
    import_file(again, backup)
    assert [v["verdict"] for v in again.conversation_verdicts(sid)] == ["tie"]
    assert (
        again.reason(ids["a"], "bo") == "off topic" and again.reason(ids["a"], "adjudicator/cy") == "on topic after all"
    )
    assert again.kind_of("adjudicator/cy") == "adjudicator"
    assert again.lowest_labels(raters="adjudicated") == store.lowest_labels(raters="adjudicated")
    assert "".join(dumps(r) + "\n" for r in session_records(again)) == backup.read_text()  # byte for byte


def test_the_panel_shows_the_reason_after_the_label():
    from limachat.demo import rating
    from limachat.demo.history import View

    v = View(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        ["Fail"],
        ["u1", "a1"],
        ["gives <b>no</b> answer"],
    )
    assert (
        rating.caption(v, 0, "B: ") == "B: reply 1 of 1 · your label: **fail** · reason: *gives &lt;b>no&lt;/b> answer*"
    )
    assert rating.caption(View(v.history, [None], v.ids, [None]), 0) == "reply 1 of 1 · not rated yet"
