"""The report: LIMA's Figure 7 figures, turn index, early fails, winners and agreement."""

from __future__ import annotations

import csv
import io

import pytest
from click.testing import CliRunner

from limachat.cli import main
from limachat.dialogues import report as rep
from limachat.dialogues.store import Store


def conversation(store, checkpoint, labels, annotator="ana", session=None, lane=None):
    sid = session or store.start_session("chat")
    parent, ids = None, []
    for i, label in enumerate(labels):
        u = store.add_user_turn(sid, f"q{i}", parent_id=parent, lane=lane)
        a = store.begin_assistant_turn(sid, u, checkpoint=checkpoint, lane=lane)
        store.finish_assistant_turn(a, f"a{i} from {checkpoint} in {sid}")
        store.rate(a, annotator, label)
        parent, ids = a, ids + [a]
    return sid, ids


def paper_db(tmp_path) -> Store:
    """The totals of LIMA's Figure 7 (Zhou et al., 2023): zero-shot 42 turns (19 excellent, 8 pass,
    15 fail), dialogue 46 turns (35 excellent, 10 pass, 1 fail), spread over 10 conversations each.
    The order of labels inside conversations is invented here; the paper reports only totals."""
    store = Store(tmp_path / "paper.db")
    for checkpoint, counts, lengths in (
        ("zero-shot", {"excellent": 19, "pass": 8, "fail": 15}, [5, 5, 4, 4, 4, 4, 4, 4, 4, 4]),
        ("dialogue", {"excellent": 35, "pass": 10, "fail": 1}, [5, 5, 5, 5, 5, 5, 4, 4, 4, 4]),
    ):
        pool = [lab for lab, n in counts.items() for _ in range(n)]
        pool.sort(key=lambda lab: {"fail": 0, "pass": 1, "excellent": 2}[lab])  # fails first: they come early
        interleaved = [pool[i::10] for i in range(10)]
        assert sorted(map(len, interleaved), reverse=True) == lengths
        for labels in interleaved:
            conversation(store, checkpoint, labels)
    return store


def test_figure7_totals_match_the_paper(tmp_path):
    report = rep.build(paper_db(tmp_path))
    zs, dl = report.checkpoints["zero-shot"], report.checkpoints["dialogue"]
    assert (zs.rated, zs.counts["excellent"], zs.counts["pass"], zs.counts["fail"]) == (42, 19, 8, 15)
    assert (dl.rated, dl.counts["excellent"], dl.counts["pass"], dl.counts["fail"]) == (46, 35, 10, 1)
    md = rep.markdown(report)
    assert "| zero-shot | 42 | 35.7% | 19.0% | 45.2% | 15/42 |" in md
    assert "| dialogue | 46 | 2.2% | 21.7% | 76.1% | 1/46 |" in md
    assert zs.conversations == dl.conversations == 10
    assert dl.early_fail == 1 and zs.early_fail == 10  # the fixture puts every fail first


def test_turn_index_and_early_fail(tmp_path):
    store = Store(tmp_path / "t.db")
    conversation(store, "zero-shot", ["excellent", "fail", "pass", "pass"])
    conversation(store, "zero-shot", ["excellent", "excellent", "excellent", "fail"])
    conversation(store, "zero-shot", ["pass"])
    report = rep.build(store)
    s = report.checkpoints["zero-shot"]
    assert {i: dict(c) for i, c in s.by_turn.items()} == {
        1: {"excellent": 2, "pass": 1},
        2: {"fail": 1, "excellent": 1},
        3: {"pass": 1, "excellent": 1},
        4: {"pass": 1, "fail": 1},
    }
    assert (s.early_fail, s.conversations) == (1, 3)  # the fail at turn 4 is not within 3
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(report))))
    turn2 = next(r for r in rows if r["turn"] == "2")
    assert (turn2["rated"], turn2["excellent_share"]) == ("2", "0.5000")


def test_a_turn_rated_by_two_annotators_counts_once_with_the_lower_label(tmp_path):
    store = Store(tmp_path / "t.db")
    _, [a] = conversation(store, "dialogue", ["excellent"])
    store.rate(a, "ben", "pass")
    s = rep.build(store).checkpoints["dialogue"]
    assert s.rated == 1 and s.counts["pass"] == 1


def test_winners_from_verdicts_else_from_labels(tmp_path):
    store = Store(tmp_path / "t.db")
    by_verdict = store.start_session("compare")
    _, [za] = conversation(store, "zero-shot", ["excellent"], session=by_verdict, lane="a")
    _, [db_] = conversation(store, "dialogue", ["pass"], session=by_verdict, lane="b")
    store.verdict(by_verdict, za, db_, "b", "ana")
    by_labels = store.start_session("compare")
    conversation(store, "zero-shot", ["fail", "pass"], session=by_labels, lane="a")
    conversation(store, "dialogue", ["excellent", "pass"], session=by_labels, lane="b")
    winners = {w["session"]: w for w in rep.build(store).winners}
    assert winners[by_verdict]["winner"] == "dialogue" and winners[by_verdict]["basis"].startswith("verdicts 0-1-0")
    assert winners[by_labels]["winner"] == "dialogue" and winners[by_labels]["basis"] == "mean label 0.50 vs 1.50"


def test_agreement_kappa_and_tie_discounted_accuracy(tmp_path):
    store = Store(tmp_path / "t.db")
    _, ids = conversation(store, "dialogue", ["excellent", "pass", "fail", "excellent"], annotator="ana")
    for turn, label in zip(ids, ["excellent", "pass", "pass", "pass"]):
        store.rate(turn, "ben", label)
    [agree] = rep.build(store).agreement.pairs
    assert agree.turns == 4 and agree.agreement == 0.5
    # ana: E P F E, ben: E P P P -> p_o = 0.5, p_e = (2*1 + 1*3 + 1*0) / 16 = 5/16
    assert agree.kappa == pytest.approx((0.5 - 5 / 16) / (1 - 5 / 16))
    sid = store.start_session("compare")
    pairs = []
    for _ in range(3):
        _, [a] = conversation(store, "zero-shot", ["pass"], session=sid, lane="a")
        _, [b] = conversation(store, "dialogue", ["pass"], session=sid, lane="b")
        pairs.append((a, b))
    for (a, b), (x, y) in zip(pairs, [("a", "a"), ("a", "tie"), ("a", "b")]):
        store.verdict(sid, a, b, x, "ana")
        store.verdict(sid, a, b, y, "ben")
    [v] = rep.build(store).verdict_agreement
    assert v["pairs"] == 3 and v["accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_cli_report_writes_markdown_csv_and_png(tmp_path, clean_env):
    paper_db(tmp_path)
    png, out_csv = tmp_path / "fig7.png", tmp_path / "fig7.csv"
    result = CliRunner().invoke(
        main,
        ["--home", str(tmp_path), "report", "--png", str(png), "--csv", str(out_csv)],
        env={"LIMACHAT_DB": str(tmp_path / "paper.db")},
    )
    assert result.exit_code == 0, result.output
    assert "45.2%" in result.output and "76.1%" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "zero-shot,all,42,15,8,19" in out_csv.read_text()


def test_report_shows_fluency_and_held_out_loss_per_checkpoint(tmp_path):
    import json

    store = Store(tmp_path / "r.db")
    sid = store.start_session("chat", annotator="ana")
    for checkpoint, score in (("zero-shot", 2.5), ("dialogue", 1.5), ("dialogue", 2.5)):
        user = store.add_user_turn(sid, "hi")
        reply = store.begin_assistant_turn(sid, user, checkpoint=checkpoint)
        store.finish_assistant_turn(reply, "hello")
        store.set_fluency(reply, score)
        sid = store.start_session("chat", annotator="ana")
    for name, loss in (("zero-shot", 3.04), ("dialogue", 3.02)):
        folder = tmp_path / "checkpoints" / name
        folder.mkdir(parents=True)
        (folder / "training.json").write_text(
            json.dumps(
                {
                    "heldout": {
                        "loss": loss,
                        "base_loss": 3.16,
                        "tokens": 1061,
                        "chains": 2,
                        "from_exchange": 2,
                        "epoch": 3,
                    }
                }
            )
        )
    report = rep.build(store)
    assert (report.checkpoints["dialogue"].fluency, report.checkpoints["dialogue"].scored) == (2.0, 2)
    md = rep.markdown(report, rep.heldout(tmp_path))
    assert "| zero-shot | 0 | 0.0% | 0.0% | 0.0% | 0/0 | 0 of 0 | 2.50 (1) | - |" in md
    assert "| dialogue | 3.020 | 3.16 | 1061 | 3 |" in md and md.index("| zero-shot | 3.040") < md.index(
        "| dialogue | 3.020"
    )


def judged_db(tmp_path) -> tuple[Store, list[str]]:
    """Six turns a person (ana) and a judge both rated, with known disagreements, and one pair of
    compare replies with a person's verdict and a judge's inconsistent one."""
    store = Store(tmp_path / "j.db")
    judge = store.register_annotator("judge/x/label-v1", "judge", model="x", prompt="label-v1")
    people = ["fail", "pass", "excellent", "excellent", "pass", "fail"]
    machine = ["fail", "excellent", "excellent", "pass", "pass", "excellent"]
    _, ids = conversation(store, "dialogue", people)
    for turn, label in zip(ids, machine):
        store.record_judgment(judge, "label", turn, result=label, explanation="because", raw="{}")
    sid = store.start_session("compare")
    ua, ub = store.add_user_turn(sid, "q", lane="a"), store.add_user_turn(sid, "q", lane="b")
    a = store.begin_assistant_turn(sid, ua, checkpoint="zero-shot", lane="a")
    b = store.begin_assistant_turn(sid, ub, checkpoint="dialogue", lane="b")
    for t in (a, b):
        store.finish_assistant_turn(t, "x")
    store.verdict(sid, a, b, "b", "ana")
    store.register_annotator("judge/x/pairwise-v1", "judge")
    store.record_judgment("judge/x/pairwise-v1", "pairwise", a, turn_b=b, result="inconsistent", raw=["A", "A"])
    return store, ids


def test_judges_against_people_kappa_tie_discounted_accuracy_confusion_and_win_rates(tmp_path):
    store, _ = judged_db(tmp_path)
    doc = rep.document(store)
    assert doc.humans.checkpoints["dialogue"].counts == {"fail": 2, "pass": 2, "excellent": 2}
    assert doc.judges.checkpoints["dialogue"].counts == {"fail": 1, "pass": 2, "excellent": 3}
    label, pairwise = doc.agreements
    assert (label.judge, label.turns) == ("judge/x/label-v1", 6)
    assert label.agreement == pytest.approx(3 / 6)
    # kappa: observed 0.5; expected (2*1 + 2*2 + 2*3) / 36 = 1/3; (0.5 - 1/3) / (1 - 1/3) = 0.25
    assert label.kappa == pytest.approx(0.25)
    # one point for each of the 3 agreements, half for pass/excellent (2 turns), none for fail/excellent (1)
    assert label.tie_discounted == pytest.approx((3 + 0.5 * 2) / 6)
    assert label.confusion[("fail", "excellent")] == 1 and label.confusion[("excellent", "pass")] == 1
    assert (pairwise.judge, pairwise.pairs, pairwise.verdict_accuracy) == (
        "judge/x/pairwise-v1",
        1,
        0.5,
    )  # inconsistent = tie
    rates = {(r["raters"], r["x"], r["y"]): r for r in doc.rates}
    assert rates[("humans", "dialogue", "zero-shot")]["x_rate"] == 1.0  # ana preferred dialogue
    judged = rates[("judges", "dialogue", "zero-shot")]
    assert (judged["ties"], judged["inconsistent"], judged["x_rate"]) == (1, 1, 0.5)
    text = rep.render(doc)
    assert "| judge/x/label-v1 | 6 | 50.0% | 0.25 | 66.7% | 0 | n/a |" in text
    assert "| fail | 1 | 0 | 1 |" in text  # the confusion row of the person's fails
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(*doc.reports))))
    assert {r["raters"] for r in rows} == {"humans", "judges"}
    png = tmp_path / "f7.png"
    rep.figure7(doc.reports, png)
    assert png.stat().st_size > 10_000


def test_export_takes_people_judges_or_both_and_a_person_can_win(tmp_path):
    from limachat.dialogues.export import Filters, chains

    store, ids = judged_db(tmp_path)

    def labels(**kw):
        return [c.labels for c in chains(store, Filters(mode="chat", **kw))]

    assert labels() == [["fail", "pass", "excellent", "excellent", "pass", "fail"]]  # people only, by default
    assert labels(raters="judges") == [["fail", "excellent", "excellent", "pass", "pass", "excellent"]]
    assert labels(raters="all") == [["fail", "pass", "excellent", "pass", "pass", "fail"]]  # the lower of the two
    # a turn only the judge rated: with --human-wins the people decide where they rated, the judge elsewhere
    u = store.add_user_turn(store.turn(ids[-1])["session_id"], "one more", parent_id=ids[-1])
    extra = store.begin_assistant_turn(store.turn(ids[-1])["session_id"], u, checkpoint="dialogue")
    store.finish_assistant_turn(extra, "x")
    store.record_judgment("judge/x/label-v1", "label", extra, result="pass", raw="{}")
    assert labels(raters="all", human_wins=True) == [["fail", "pass", "excellent", "excellent", "pass", "fail", "pass"]]
    assert labels(raters="humans", min_label="fail") == []  # the person never rated the new turn
    # AlpaGasus' threshold: keep chains whose every reply a judge scored at least 4.5
    store.register_annotator("judge/x/score-v1", "judge")
    for turn, score in zip(ids + [extra], [5, 4.5, 4.8, 5, 4.6, 4.9, 4.5]):
        store.record_judgment("judge/x/score-v1", "score", turn, score=score, explanation="ok", raw="{}")
    assert len(labels(min_score=4.5)) == 1 and labels(min_score=4.6) == []
    store.record_judgment("judge/x/score-v1", "score", ids[1], error="no JSON answer found", raw="garbage")
    assert len(labels(min_score=4.5)) == 1  # a failed parse is stored, and does not replace the score
    assert store.judged("judge/x/score-v1", "score") == {(t, None) for t in ids + [extra]}
