"""A bench run's report: MT-Bench's figures (Zheng et al., 2023), turn by turn, with intervals, and how far
the judge can be trusted. Computed once (`build`), rendered in one place per format (Markdown, HTML, PNG).

- Grades (single): per checkpoint the mean on turn 1, turn 2 and both, each with a 95% bootstrap interval
  over questions; the gap between checkpoints per turn, paired over the questions both answered (LIMA's
  section-6 question asked on MT-Bench); the mean per category. A grade of -1 (no rating in the judge's
  output) is left out of every mean, as FastChat's show_result.py leaves it out, and counted.
- Games (pairwise): per pair and turn, win / loss / tie as FastChat counts them (a tie when either game
  is a tie or the two orders disagree) and the win rate with ties as half, with an interval over
  questions; the judge's position consistency, how often the answer shown first wins and how often the
  longer one does.
- With several judge runs (`bench judge --runs N`): each run's mean, their spread; the headline figures
  take each reply's median grade.
- Judge against people, per turn, with and without ties, measured as FastChat's compute_agreement.py
  does, beside MT-Bench's published figures.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from limachat.dialogues import render, stats
from limachat.dialogues.bench import answers, checkpoints_of

# The MT-Bench paper's agreement on its expert votes (Zheng et al., 2023): GPT-4 pairwise against the
# experts, and the experts among themselves (with ties, without ties).
PUBLISHED = {"judge vs experts": (0.66, 0.85), "experts among themselves": (0.63, 0.81)}
# Biases users measured in FastChat's shipped GPT-4 judgments of MT-Bench (quoted in issue 32).
PUBLISHED_FLIPS = 0.129  # verdicts that change when the answers swap places
PUBLISHED_LONGER = 0.68  # how often the longer answer wins


@dataclass
class Grades:
    judge: str
    runs: int
    by: dict[str, dict[int, stats.Estimate]] = field(default_factory=dict)  # checkpoint -> turn (0: both)
    gaps: list[tuple[str, str, int, stats.Estimate, int]] = field(default_factory=list)  # first, other, turn, gap, n
    categories: dict[str, dict[str, float]] = field(default_factory=dict)  # category -> checkpoint -> mean
    run_means: dict[str, list[float]] = field(default_factory=dict)  # checkpoint -> each run's overall mean
    unparsed: int = 0
    graded: int = 0


@dataclass
class Games:
    judge: str
    pairs: list[dict[str, Any]] = field(default_factory=list)  # per (model_1, model_2, turn): counts, win rate
    consistent: tuple[int, int] = (0, 0)  # pairs whose two orders agree, pairs with both games parsed
    first_wins: tuple[int, int] = (0, 0)  # decisive games won by the answer shown first, decisive games
    longer_wins: tuple[int, int] = (0, 0)  # decisive games won by the longer answer (of unequal lengths)
    errors: int = 0  # games without a verdict


@dataclass
class Agreement:
    turn: int
    judge_people: tuple[tuple[int, int], tuple[int, int]]  # (agree, total) with ties, without ties
    people: tuple[tuple[int, int], tuple[int, int]]


@dataclass
class BenchReport:
    run: str
    questions: int
    checkpoints: list[str]
    answered: dict[str, int]
    grades: Grades | None
    games: Games | None
    agreement: list[Agreement]
    votes: int


def _median_scores(rows: list[dict]) -> dict[tuple[str, str, int], float]:
    """(question, model, turn) -> the median of its parsed grades over the judge's runs."""
    by: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for j in rows:
        if j["score"] != -1:
            by[(j["question_id"], j["model_1"], j["turn"])].append(j["score"])
    return {k: statistics.median(v) for k, v in by.items()}


def _grades(store, run: str, judge: str, order: list[str], category: dict[str, str], runs: int | None) -> Grades:
    rows = store.bench_judgments(run, "single", judge)
    repeats = sorted({j["repeat"] for j in rows})
    if runs is not None:
        if len(repeats) < runs:
            raise ValueError(
                f"--runs {runs}: {judge} judged run {run} {len(repeats)} time(s); `limachat bench judge {run} "
                f"--mode single --runs {runs}` adds the rest"
            )
        rows = [j for j in rows if j["repeat"] < runs]
        repeats = repeats[:runs]
    g = Grades(judge, len(repeats), unparsed=sum(j["score"] == -1 for j in rows), graded=len(rows))
    scores = _median_scores(rows)
    for ck in order:
        g.by[ck] = {}
        for turn in (1, 2, 0):
            per_q: dict[str, list[float]] = defaultdict(list)
            for (q, m, t), s in scores.items():
                if m == ck and (turn == 0 or t == turn):
                    per_q[q].append(s)
            g.by[ck][turn] = stats.mean(list(per_q.values()))
        if len(repeats) > 1:
            g.run_means[ck] = [
                statistics.fmean(
                    j["score"] for j in rows if j["model_1"] == ck and j["repeat"] == r and j["score"] != -1
                )
                for r in repeats
                if any(j["model_1"] == ck and j["repeat"] == r and j["score"] != -1 for j in rows)
            ]
    for first, other in combinations(order, 2):
        for turn in (1, 2):
            gaps = [
                scores[(q, other, t)] - s
                for (q, m, t), s in scores.items()
                if m == first and t == turn and (q, other, t) in scores
            ]
            g.gaps.append((first, other, turn, stats.paired_mean(gaps), len(gaps)))
    cats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (q, m, _), s in scores.items():
        cats[category[q]][m].append(s)
    g.categories = {c: {m: statistics.fmean(v) for m, v in by.items()} for c, by in sorted(cats.items())}
    return g


def _vote(g1: str, g2: str) -> str | None:
    """A pair's outcome as FastChat counts it: model_1, model_2 or tie (None: a game without a verdict)."""
    if "error" in (g1, g2):
        return None
    return g1 if g1 == g2 and g1 != "tie" else "tie"


def _games(store, run: str, judge: str, length: dict[str, int]) -> Games:
    rows = [j for j in store.bench_judgments(run, "pairwise", judge) if j["repeat"] == 0]
    out = Games(judge, errors=sum((j["g1_winner"] == "error") + (j["g2_winner"] == "error") for j in rows))
    by: dict[tuple[str, str, int], list[float]] = defaultdict(list)  # model_1's score per question: 1, 0.5, 0
    counts: dict[tuple[str, str, int], dict[str, int]] = defaultdict(lambda: {"win": 0, "loss": 0, "tie": 0})
    consistent = parsed = first = decisive = longer = unequal = 0
    for j in rows:
        key = (j["model_1"], j["model_2"], j["turn"])
        vote = _vote(j["g1_winner"], j["g2_winner"])
        if vote is not None:
            parsed += 1
            consistent += j["g1_winner"] == j["g2_winner"]
            c = counts[key]
            c["win" if vote == "model_1" else "loss" if vote == "model_2" else "tie"] += 1
            by[key].append({"model_1": 1.0, "model_2": 0.0, "tie": 0.5}[vote])
        sides = {"model_1": j["turn_1"], "model_2": j["turn_2"]}
        for game, shown_first in ((j["g1_winner"], "model_1"), (j["g2_winner"], "model_2")):
            if game in ("model_1", "model_2"):
                decisive += 1
                first += game == shown_first
                loser = "model_2" if game == "model_1" else "model_1"
                a, b = length[sides[game]], length[sides[loser]]
                if a != b:
                    unequal += 1
                    longer += a > b
    out.consistent, out.first_wins, out.longer_wins = (consistent, parsed), (first, decisive), (longer, unequal)
    for key in sorted(counts, key=lambda k: (k[2], k[0], k[1])):
        c = counts[key]
        out.pairs.append(
            {"model_1": key[0], "model_2": key[1], "turn": key[2], **c, "win_rate": stats.paired_mean(by[key])}
        )
    return out


def _agreement(store, run: str, judge: str | None) -> tuple[list[Agreement], int]:
    """Judge against people and people among themselves, per turn, as FastChat's compute_agreement.py
    counts: every (judge vote, person vote) pair on the same question, model pair and turn; every pair of
    two people's votes; "without ties" drops a pair where either vote is a tie."""
    votes = store.bench_verdicts(run)
    people: dict[tuple, list[str]] = defaultdict(list)
    for v in votes:
        a, b, w = v["checkpoint_a"], v["checkpoint_b"], {"a": "model_a", "b": "model_b", "tie": "tie"}[v["verdict"]]
        if a > b:
            a, b, w = b, a, {"model_a": "model_b", "model_b": "model_a"}.get(w, w)
        people[(v["question_id"], a, b, v["turn"])].append(w)
    machine: dict[tuple, str] = {}
    if judge:
        for j in store.bench_judgments(run, "pairwise", judge):
            vote = _vote(j["g1_winner"], j["g2_winner"]) if j["repeat"] == 0 else None
            if vote is None:
                continue
            a, b = j["model_1"], j["model_2"]
            w = {"model_1": "model_a", "model_2": "model_b", "tie": "tie"}[vote]
            if a > b:
                a, b, w = b, a, {"model_a": "model_b", "model_b": "model_a"}.get(w, w)
            machine[(j["question_id"], a, b, j["turn"])] = w
    out = []
    for turn in sorted({k[3] for k in people}):
        jp = [[0, 0], [0, 0]]
        pp = [[0, 0], [0, 0]]
        for key, ws in people.items():
            if key[3] != turn:
                continue
            if key in machine:
                for w in ws:
                    for i, ban in enumerate((False, True)):
                        if ban and "tie" in (w, machine[key]):
                            continue
                        jp[i][1] += 1
                        jp[i][0] += w == machine[key]
            for x, y in combinations(ws, 2):
                for i, ban in enumerate((False, True)):
                    if ban and "tie" in (x, y):
                        continue
                    pp[i][1] += 1
                    pp[i][0] += x == y
        out.append(Agreement(turn, (tuple(jp[0]), tuple(jp[1])), (tuple(pp[0]), tuple(pp[1]))))
    return out, len(votes)


def _pick(judges: list[tuple[str, str]], mode: str, judge: str | None) -> str | None:
    names = [j for j, m in judges if m == mode]
    if judge:
        return judge if judge in names else None
    return names[-1] if names else None


def build(store, run: str, judge: str | None = None, runs: int | None = None) -> BenchReport:
    """The report of bench run `run`, by `judge` (default: the judge that judged it, the last named when several)."""
    questions = store.bench_questions(run)
    category = {q["id"]: q["category"] for q in questions}
    found = answers(store.bench_turns(run))
    order = checkpoints_of(store, run)
    turns_of = {q["id"]: len(q["record"]["turns"]) for q in questions}
    answered = {ck: sum(a.done(turns_of[q]) for (q, c), a in found.items() if c == ck) for ck in order}
    judges = store.bench_judges(run)
    if judge and judge not in {j for j, _ in judges}:
        known = ", ".join(sorted({j for j, _ in judges})) or "none yet: limachat bench judge"
        raise ValueError(f"--judge: {judge!r} did not judge bench {run} (judges: {known})")
    single, pair = _pick(judges, "single", judge), _pick(judges, "pairwise", judge)
    length = {r["id"]: len(r["content"]) for a in found.values() for r in a.replies if r is not None}
    agreement, votes = _agreement(store, run, pair)
    return BenchReport(
        run,
        len(questions),
        order,
        answered,
        _grades(store, run, single, order, category, runs) if single else None,
        _games(store, run, pair, length) if pair else None,
        agreement,
        votes,
    )


# -- rendering: the tables once, then each format ------------------------------------------------------
def _n(e: stats.Estimate) -> str:
    return "n/a" if math.isnan(e.value) else f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"


def _share(hits: int, total: int) -> str:
    return f"{100 * hits / total:.1f}% ({hits} of {total})" if total else "n/a"


def sections(r: BenchReport) -> list[tuple[str, list[str], list[list[str]], str]]:
    out = [
        (
            "Answers",
            ["checkpoint", "questions answered on every turn"],
            [[ck, f"{r.answered[ck]} of {r.questions}"] for ck in r.checkpoints],
            "Answers written by `limachat bench answer` or read by `limachat bench import`.",
        )
    ]
    g = r.grades
    if g:
        out.append(
            (
                f"Grades (1-10), judge {g.judge}",
                ["checkpoint", "turn 1", "turn 2", "overall"],
                [[ck, *(_n(g.by[ck][t]) for t in (1, 2, 0))] for ck in r.checkpoints],
                f"Means with 95% bootstrap intervals over questions. {g.unparsed} of {g.graded} judgments held no "
                "rating (score -1) and are left out, as FastChat's show_result.py leaves them out."
                + (f" Each reply's median over {g.runs} judge runs." if g.runs > 1 else ""),
            )
        )
        out.append(
            (
                "The gap per turn",
                ["comparison", "turn", "mean gap", "questions"],
                [[f"{o} − {f}", str(t), _n(e), str(n)] for f, o, t, e, n in g.gaps],
                "Paired over the questions both answered and the judge graded; an interval that spans 0 cannot "
                "tell the two apart on this many questions.",
            )
        )
        out.append(
            (
                "Mean grade per category",
                ["category", *r.checkpoints],
                [
                    [c, *(f"{by[ck]:.2f}" if ck in by else "n/a" for ck in r.checkpoints)]
                    for c, by in g.categories.items()
                ],
                "Both turns together.",
            )
        )
        if g.run_means:
            out.append(
                (
                    f"Run to run ({g.runs} judge runs)",
                    ["checkpoint", "each run's mean", "spread (max − min)"],
                    [
                        [ck, ", ".join(f"{m:.2f}" for m in ms), f"{max(ms) - min(ms):.2f}" if ms else "n/a"]
                        for ck, ms in g.run_means.items()
                    ],
                    "MT-Bench users report swings of 0.16-0.2 points between runs of one judge and take the median.",
                )
            )
    p = r.games
    if p:
        out.append(
            (
                f"Games (pairwise), judge {p.judge}",
                ["model 1", "model 2", "turn", "win", "loss", "tie", "model 1's win rate (ties half)"],
                [
                    [
                        x["model_1"],
                        x["model_2"],
                        str(x["turn"]),
                        str(x["win"]),
                        str(x["loss"]),
                        str(x["tie"]),
                        _n(x["win_rate"]),
                    ]
                    for x in p.pairs
                ],
                "Each pair judged twice with the answers' places swapped; a tie in either game, or two games that "
                "disagree, count as a tie (FastChat's rule). Intervals over questions.",
            )
        )
        out.append(
            (
                "How far the judge can be trusted",
                ["measure", "this judge", "published (GPT-4 on MT-Bench)"],
                [
                    ["the two orders agree", _share(*p.consistent), f"{100 * (1 - PUBLISHED_FLIPS):.1f}%"],
                    ["the answer shown first wins", _share(*p.first_wins), "50% for a judge with no position bias"],
                    ["the longer answer wins", _share(*p.longer_wins), f"{100 * PUBLISHED_LONGER:.0f}%"],
                    ["games without a verdict", str(p.errors), "-"],
                ],
                "Shown-first and longer count each decisive game on its own; longer leaves out answers of equal length.",
            )
        )
    if r.agreement:
        rows = []
        for a in r.agreement:
            rows.append([f"judge vs people, turn {a.turn}", _share(*a.judge_people[0]), _share(*a.judge_people[1])])
            rows.append([f"people among themselves, turn {a.turn}", _share(*a.people[0]), _share(*a.people[1])])
        for name, (w, wo) in PUBLISHED.items():
            rows.append([f"published: {name} (MT-Bench)", f"{100 * w:.0f}%", f"{100 * wo:.0f}%"])
        out.append(
            (
                "Judge against people",
                ["who", "agreement with ties", "without ties"],
                rows,
                f"{r.votes} verdicts by people on these answers. Counted as FastChat's compute_agreement.py counts: "
                "every pair of votes on the same question, pair of models and turn.",
            )
        )
    return out


def markdown(r: BenchReport) -> str:
    out = render.markdown(f"Bench {r.run}", _summary(r), [(None, sections(r))])
    if not r.grades and not r.games:
        out += f"\nNo judgments yet: `limachat bench judge {r.run} --mode single` grades the answers.\n"
    return out


def _summary(r: BenchReport) -> str:
    return f"{r.questions} questions; checkpoints {', '.join(r.checkpoints) or 'none yet'}."


def figure(r: BenchReport, path: Path | None = None) -> bytes:
    """Mean grade per turn with intervals, and per category (MT-Bench's own picture, as grouped bars)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    g = r.grades
    cks = r.checkpoints
    width = 0.8 / max(len(cks), 1)
    if g:
        for i, ck in enumerate(cks):
            xs = [t - 1 + (i - (len(cks) - 1) / 2) * width for t in (1, 2, 3)]
            es = [g.by[ck][t] for t in (1, 2, 0)]
            vals = [0 if math.isnan(e.value) else e.value for e in es]
            err = [
                [0 if math.isnan(e.value) else e.value - e.low for e in es],
                [0 if math.isnan(e.value) else e.high - e.value for e in es],
            ]
            ax.bar(xs, vals, width, yerr=err, capsize=3, label=ck)
        ax.set_xticks([0, 1, 2], ["turn 1", "turn 2", "overall"])
        ax.set_ylim(0, 10)
        ax.set_ylabel("mean grade (1-10), 95% interval")
        ax.legend(fontsize=8)
        cats = list(g.categories)
        for i, ck in enumerate(cks):
            xs = [k + (i - (len(cks) - 1) / 2) * width for k in range(len(cats))]
            ax2.bar(xs, [g.categories[c].get(ck, 0) for c in cats], width, label=ck)
        ax2.set_xticks(range(len(cats)), cats, rotation=20)
        ax2.set_ylim(0, 10)
        ax2.set_title("Mean grade per category")
    else:
        for a in (ax, ax2):
            a.text(0.5, 0.5, "no grades yet", ha="center", va="center")
            a.set_axis_off()
    ax.set_title(f"Bench {r.run}: grade per turn")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def to_html(r: BenchReport, chart: bytes | None = None) -> str:
    return render.html_page(
        f"Bench {r.run}",
        _summary(r),
        chart if chart is not None else figure(r),
        "grades per turn and category",
        [(None, sections(r))],
        "Written by limachat (limachat bench report).",
    )


def write(r: BenchReport, *, html_path: Path | None = None, png: Path | None = None) -> None:
    chart = figure(r, png) if (png or html_path) else None
    if html_path:
        Path(html_path).write_text(to_html(r, chart), encoding="utf-8")
