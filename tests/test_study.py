"""Studies and their statistics, without the app: the plan, the progress board, the report's numbers
against hand-computed cases and LIMA's own counts, the CLI, and a backup that keeps the link."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from click.testing import CliRunner
from test_report import conversation

from limachat.cli import main
from limachat.dialogues import stats
from limachat.dialogues import study as studies
from limachat.dialogues import study_report as srep
from limachat.dialogues.formats import dumps, import_file, session_records
from limachat.dialogues.store import Store

E, P, F = "excellent", "pass", "fail"


# -- statistics, by hand ---------------------------------------------------------------------------------
def test_share_interval_resamples_conversations_not_turns():
    # Two conversations, [E, E, E] and [F]: 3 of 4 turns excellent. Resampling the two conversations
    # gives three outcomes: both the first (1.0, p = 1/4), both the second (0.0, p = 1/4), one each
    # (0.75, p = 1/2); the 95% percentile interval is [0, 1]. Resampling turns would give a narrow one.
    e = stats.share([[E, E, E], [F]], E)
    assert e.value == 0.75 and (e.low, e.high) == (0.0, 1.0)
    same = stats.share([[E, P], [E, P], [E, P]], E)  # every conversation alike: no spread at all
    assert (same.value, same.low, same.high) == (0.5, 0.5, 0.5)
    alone = stats.share([[E, F]], E)  # one conversation: nothing to resample; the interval is the value, said so
    assert (alone.low, alone.high) == (0.5, 0.5)


def test_difference_and_counts():
    a = [[F, P], [F, E]]
    b = [[E, E], [E, P]]
    d = stats.difference(a, b, E)
    assert d.value == pytest.approx(0.75 - 0.25)
    assert d.low <= d.value <= d.high
    assert stats.fails([[F, F, E], [P, F]]) == (3, 5)
    assert stats.failed_within([[E, E, E, F], [E, F], [P]], 3) == (1, 3)
    tally = stats.conversation_outcomes([("x", "y", "y"), ("y", "x", "y"), ("x", "y", "tie"), ("x", "y", "x")])
    assert tally == {("x", "y"): {"x": 1, "y": 2, "tie": 1}}


def test_bradley_terry_by_hand():
    # Without a prior, two models, x beating y 3 times in 4: strengths differ by ln 3, which is
    # 400 * log10(3) = 190.8 Elo points, centred on 1000.
    board = stats.bradley_terry([(f"c{i}", "x", "y", v) for i, v in enumerate("aaab")], prior=0)
    assert [r.checkpoint for r in board] == ["x", "y"]
    assert board[0].rating - board[1].rating == pytest.approx(400 * math.log10(3), abs=0.05)
    assert board[0].rating + board[1].rating == pytest.approx(2000, abs=0.01)
    even = stats.bradley_terry([("c1", "x", "y", "a"), ("c2", "x", "y", "b"), ("c3", "x", "y", "tie")])
    assert even[0].rating == pytest.approx(1000, abs=0.01) and even[1].rating == pytest.approx(1000, abs=0.01)
    # Three models, each pair played, x > y > z every time; an undefeated x stays finite (the prior).
    three = [(f"c{i}", a, b, "a") for i, (a, b) in enumerate([("x", "y"), ("y", "z"), ("x", "z")] * 3)]
    board = stats.bradley_terry(three)
    assert [r.checkpoint for r in board] == ["x", "y", "z"]
    assert all(math.isfinite(r.rating) and r.low <= r.rating <= r.high for r in board)
    assert board[0].battles == 6
    assert stats.bradley_terry(three) == board  # seeded: the same intervals again


def test_resampling_runs_on_one_blas_thread(monkeypatch):
    """The app resamples beside vLLM on the same cores, where a BLAS thread per core waits on threads the
    server pushed off (dialogues/stats.py): every resample's statistic and Bradley-Terry fit sees one."""
    import numpy as np
    from threadpoolctl import threadpool_info

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    seen = []

    def mean(index, axis=-1):
        seen.append(blas_threads())
        return np.mean(index, axis=axis)

    stats._bootstrap((np.arange(6.0),), mean, seed=0, resamples=50)
    fit = stats._fit
    monkeypatch.setattr(stats, "_fit", lambda *a: seen.append(blas_threads()) or fit(*a))
    stats.bradley_terry([(f"c{i}", "x", "y", v) for i, v in enumerate("aab")], resamples=20)
    assert len(seen) > 20 and all(s == {1} for s in seen), seen


# -- LIMA's section 6 as a synthetic study ---------------------------------------------------------------
# Zhou et al. (2023), section 6: 10 conversations per checkpoint; zero-shot 42 turns (45.2% excellent,
# 15 failed), dialogue 46 (76.1% excellent, 1 failed); zero-shot failed within 3 turns in 6 of 10;
# dialogue better in 7 of 10 conversations and tied in 3. Only those totals are the paper's; the order
# of labels inside each conversation is made up here to fit them.
ZERO_SHOT = [
    [F, F, F, E, E],
    [F, F, E, P, F],
    [F, E, E, F],
    [E, F, E, P],
    [E, E, F, P],
    [P, F, E, E],
    [E, E, P, F],
    [E, P, E, F],
    [E, E, P, F],
    [E, E, P, F],
]
DIALOGUE = [[E, E, E, E, F]] + [[E, E, E, P, E]] * 5 + [[E, E, P, E], [E, P, E, E], [E, E, E, P], [E, P, P, E]]


def lima_study(tmp_path) -> Store:
    store = Store(tmp_path / "lima.db")
    studies.create(store, "lima", ["zero-shot", "dialogue"], conversations=10, turns=4, blind=False, seed=3)
    for n, (zs, dl) in enumerate(zip(ZERO_SHOT, DIALOGUE)):
        sides = {"a": "zero-shot", "b": "dialogue"} if n % 2 else {"a": "dialogue", "b": "zero-shot"}
        sid = store.start_session("compare", annotator="ana", study="lima", slot=n, meta={"lanes": sides})
        ids = {c: conversation(store, c, zs if c == "zero-shot" else dl, "ana", sid, ln)[1] for ln, c in sides.items()}
        better = "tie" if n >= 7 else ("a" if sides["a"] == "dialogue" else "b")
        store.verdict(sid, ids[sides["a"]][0], ids[sides["b"]][0], better, "ana")
    return store


def test_lima_counts_reproduced(tmp_path):
    assert sum(map(len, ZERO_SHOT)) == 42 and sum(map(len, DIALOGUE)) == 46
    assert Counter(x for c in ZERO_SHOT for x in c) == {E: 19, P: 8, F: 15}
    assert Counter(x for c in DIALOGUE for x in c) == {E: 35, P: 10, F: 1}
    report = srep.build(lima_study(tmp_path), "lima")
    zs, dl = report.sides
    assert (zs.checkpoint, len(zs.conversations), zs.turns) == ("zero-shot", 10, 42)
    assert (dl.checkpoint, len(dl.conversations), dl.turns) == ("dialogue", 10, 46)
    assert f"{100 * zs.shares[E].value:.1f}" == "45.2" and f"{100 * dl.shares[E].value:.1f}" == "76.1"
    assert stats.fails(zs.conversations) == (15, 42) and stats.fails(dl.conversations) == (1, 46)
    assert stats.failed_within(zs.conversations, 3) == (6, 10) and stats.failed_within(dl.conversations, 3) == (0, 10)
    assert report.outcomes == {("zero-shot", "dialogue"): {"zero-shot": 0, "dialogue": 7, "tie": 3}}
    ((first, second, diff),) = report.differences
    assert (first, second) == ("zero-shot", "dialogue")
    assert (
        diff.value == pytest.approx(35 / 46 - 19 / 42) and diff.low > 0
    )  # the paper's gap holds over 10 conversations
    assert zs.shares[E].low < 0.452 < zs.shares[E].high
    assert [r.checkpoint for r in report.leaderboard] == ["dialogue", "zero-shot"] and report.leaderboard[0].low > 1000
    md = srep.markdown([report])
    assert "| zero-shot | 10 | 42 |" in md and "15 of 42" in md and "6 of 10" in md and "1 of 46" in md
    assert "dialogue better in 7 of 10, tied in 3" in md
    assert "45.2% [" in md and "76.1% [" in md


# -- the plan and the board ------------------------------------------------------------------------------
def test_plan_is_balanced_seeded_and_per_annotator(tmp_path):
    store = Store(tmp_path / "p.db")
    st = studies.create(store, "s", ["zero-shot", "dialogue"], conversations=10, turns=3, seed=1)
    ana, ana_again, bo = studies.plan(st, "ana"), studies.plan(st, "ana"), studies.plan(st, "bo")
    assert ana == ana_again and ana != bo
    assert len(ana) == 10 and sorted(s.index for s in ana) == list(range(10))
    assert all(sorted(s.sides.values()) == ["dialogue", "zero-shot"] for s in ana)
    assert 2 <= sum(s.sides["a"] == "dialogue" for s in ana) <= 8  # sides drawn, not fixed
    assert len({s.prompt_id for s in ana}) == 10  # ten different openings from the bundled set
    three = studies.create(store, "t", ["x", "y", "z"], conversations=3, turns=2, seed=1)
    slots = studies.plan(three, "ana")
    per = Counter(c for s in slots for c in s.sides.values())
    assert min(per.values()) >= 3 and len(slots) == 6


def test_progress_board_and_next_conversation(tmp_path):
    store = Store(tmp_path / "b.db")
    st = studies.create(
        store, "s", ["zero-shot", "dialogue"], conversations=2, turns=2, annotators=["ana", "bo"], seed=0
    )
    with pytest.raises(ValueError, match="not an annotator of study 's'"):
        studies.next_conversation(store, st, "cy")
    first = studies.next_conversation(store, st, "ana")
    assert first.session is None
    sid = store.start_session(
        "compare", annotator="ana", study="s", slot=first.slot.index, meta={"lanes": first.slot.sides}
    )
    for ln, c in first.slot.sides.items():
        conversation(store, c, [E, P], "ana", sid, ln)
    walked = list(studies.walk(store, st, "ana"))
    done = next(c for c in walked if c.session == sid)
    assert studies.conversation_at(store, st, "ana", first.slot.index) == (done, walked.index(done) + 1, 2)
    assert done.done(2) and done.replies == 4 and done.rated == 4
    nxt = studies.next_conversation(store, st, "ana")
    assert nxt.slot.index != first.slot.index and nxt.session is None
    board = {(r["annotator"], r["checkpoint"]): r for r in studies.progress(store, st)}
    assert board[("ana", "dialogue")]["conversations done"] == "1 / 2"
    assert board[("ana", "dialogue")]["replies rated"] == "2 / 4"
    assert board[("bo", "zero-shot")]["conversations done"] == "0 / 2" and board[("bo", "zero-shot")]["started"] == 0
    assert "has reached its 2 turns" in studies.status_line(st, done, 1, 2)


def test_bad_study_definitions(tmp_path):
    store = Store(tmp_path / "x.db")
    for kwargs, message in (
        ({"checkpoints": ["a"]}, "two or more different"),
        ({"checkpoints": ["a", "a"]}, "two or more different"),
        ({"conversations": 0}, "conversations: a whole number"),
        ({"turns": "3"}, "turns: a whole number"),
        ({"name": "no spaces"}, "study name"),
        ({"known": ["a"]}, "checkpoints: unknown 'b'"),
    ):
        args = {"name": "s", "checkpoints": ["a", "b"], **kwargs}
        with pytest.raises(ValueError, match=message):
            studies.create(store, args.pop("name"), args.pop("checkpoints"), **args)
    studies.create(store, "s", ["a", "b"])
    with pytest.raises(ValueError, match="exists already"):
        studies.create(store, "s", ["a", "b"])


# -- CLI, HTML, backup -------------------------------------------------------------------------------------
def test_cli_study_and_html_report(tmp_path, clean_env):
    store = lima_study(tmp_path)
    store.close()
    env = {"LIMACHAT_HOME": str(tmp_path)}
    run = CliRunner().invoke
    (tmp_path / "limachat.db").unlink(missing_ok=True)
    (tmp_path / "lima.db").rename(tmp_path / "limachat.db")
    out = run(main, ["study", "status", "lima"], env=env)
    assert out.exit_code == 0, out.output
    assert "ana" in out.output and "dialogue" in out.output
    page = tmp_path / "out" / "lima.html"
    (tmp_path / "out").mkdir()
    out = run(
        main, ["report", "--study", "lima", "--html", str(page), "--csv", str(tmp_path / "out" / "l.csv")], env=env
    )
    assert out.exit_code == 0, out.output
    assert "dialogue better in 7 of 10, tied in 3" in out.output
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "data:image/png;base64," in text and "76.1% [" in text
    assert 'src="http' not in text and "<script" not in text  # self-contained: nothing to fetch
    rows = list(csv_rows(tmp_path / "out" / "l.csv"))
    assert {(r["checkpoint"], r["label"], r["count"]) for r in rows} >= {
        ("zero-shot", "excellent", "19"),
        ("dialogue", "fail", "1"),
    }
    out = run(main, ["study", "create", "lima", "--checkpoints", "zero-shot,dialogue"], env=env)
    assert out.exit_code != 0 and "exists already" in out.output and "Traceback" not in out.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n')
    for args, said in (
        (["--checkpoints", "zero-shot"], "two or more different checkpoints"),
        (["--checkpoints", "zero-shot,gpt-9"], "checkpoints: unknown 'gpt-9'"),
        (["--checkpoints", "zero-shot,dialogue", "--prompts", str(bad)], f"{bad}:2"),
        (["--checkpoints", "zero-shot,dialogue", "--turns", "0"], "turns: a whole number"),
    ):
        out = run(main, ["study", "create", "other", *args], env=env)
        assert out.exit_code == 1 and said in out.output and "Traceback" not in out.output, out.output
        assert len(out.output.strip().splitlines()) == 1, out.output
    out = run(main, ["report", "--html", str(page)], env=env)
    assert out.exit_code == 1 and "--html needs --study NAME" in out.output
    out = run(main, ["report", "--study", "nope"], env=env)
    assert out.exit_code != 0 and "no study 'nope'; known: lima" in out.output
    out = run(
        main,
        [
            "study",
            "create",
            "two",
            "--checkpoints",
            "zero-shot,dialogue",
            "--conversations",
            "2",
            "--turns",
            "2",
            "--annotators",
            "ana,bo",
        ],
        env=env,
    )
    assert out.exit_code == 0, out.output
    out = run(main, ["study", "status", "two"], env=env)
    assert "0 / 2" in out.output and "bo" in out.output


def csv_rows(path):
    import csv

    with open(path) as f:
        yield from csv.DictReader(f)


def test_backup_and_export_keep_the_study(tmp_path):
    from limachat.dialogues.export import Filters, chains

    store = lima_study(tmp_path)
    exported = [c.provenance() for c in chains(store, Filters())]
    assert len(exported) == 20 and {(p["study"], p["mode"]) for p in exported} == {("lima", "compare")}
    assert sorted({p["slot"] for p in exported}) == list(range(10))
    backup = tmp_path / "backup.jsonl"
    backup.write_text("".join(dumps(r) + "\n" for r in session_records(store)))
    assert all("study" in json.loads(line) for line in backup.read_text().splitlines())
    other = Store(tmp_path / "other.db")
    assert import_file(other, backup, "sessions").sessions_added == 10
    assert other.study("lima")["checkpoints"] == ["zero-shot", "dialogue"]
    assert len(other.study_sessions("lima")) == 10
    assert srep.markdown([srep.build(other, "lima")]) == srep.markdown([srep.build(store, "lima")])


def test_judges_beside_people_in_a_study(tmp_path):
    store = lima_study(tmp_path)
    judge = store.register_annotator("judge/base/label-v1", "judge", model="base")
    sessions = store.study_sessions("lima")
    for s in sessions[:4]:  # the judge labels every reply of four conversations "pass", and prefers side b
        replies = {
            lane: [t for t in store.branch(s[f"leaf_{lane}"]) if t["role"] == "assistant"] for lane in ("a", "b")
        }
        for t in replies["a"] + replies["b"]:
            store.rate(t["id"], judge, "pass")
        store.verdict(s["id"], replies["a"][0]["id"], replies["b"][0]["id"], "b", judge)
    people, judges = srep.document(store, "lima")
    assert (people.raters, judges.raters) == ("humans", "judges")
    assert people.sides[0].turns == 42 and f"{100 * people.sides[1].shares[E].value:.1f}" == "76.1", (
        "judges change nothing of people's"
    )
    assert (
        all(s.shares["pass"].value == 1.0 for s in judges.sides)
        and sum(len(s.conversations) for s in judges.sides) == 8
    )
    assert judges.verdicts == 4 and people.verdicts == 10
    md = srep.markdown([people, judges])
    assert md.index("## Rated by people") < md.index("## Rated by LLM judges")
