"""A study's report, fit for a paper: LIMA section 6's figures per checkpoint with 95% intervals over
conversations, the differences between checkpoints, per-conversation outcomes and a Bradley-Terry
leaderboard; by people and, where judges rated the study's turns, by judges beside them. Markdown
for the terminal, CSV, a PNG, and one self-contained HTML page (charts embedded) to mail.

A conversation is one lane of a study session followed down its newest branch; each reply counts
with the lowest current label among the raters taken (as everywhere in limachat).
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from limachat.dialogues import render, stats
from limachat.dialogues.agreement import PeopleAgreement, people_agreement
from limachat.dialogues.report import why_failed
from limachat.dialogues.store import LABELS, RANK, Store
from limachat.dialogues.values import COLORS, num
from limachat.dialogues.values import pct as share_pct

WHO = {"humans": "people", "judges": "LLM judges", "adjudicated": "people, adjudicated"}
POWER = 0.8  # of the estimate of conversations needed


@dataclass
class Side:
    checkpoint: str
    conversations: list[list[str]] = field(default_factory=list)  # each: its rated replies' labels, in order
    shares: dict[str, stats.Estimate] = field(default_factory=dict)

    @property
    def turns(self) -> int:
        return sum(map(len, self.conversations))


@dataclass
class HistoryEffect:
    """A checkpoint pair's excellent-share gap (second − first) with its own history and with a shared one,
    and how much of the first the history explains: their difference."""

    first: str
    second: str
    own: stats.Estimate
    shared: stats.Estimate
    explained: stats.Estimate

    def words(self) -> str:
        a, b, own, shared, d = self.first, self.second, self.own, self.shared, self.explained
        if own.value != own.value or shared.value != shared.value:
            return "Not yet: this needs rated conversations of both checkpoints under both histories."
        said = (
            f"{b} − {a} in excellent share: {_points(own)} with each side's own history, {_points(shared)} when both "
            "continue from one shared history."
        )
        if own.value <= 0:
            return f"{said} There is no gain with its own history for the history to explain."
        part = d.value / own.value
        share = "more than all" if part > 1 else "none" if part <= 0 else f"about {100 * part:.0f}%"
        said += f" The history it builds accounts for {_points(d)}: {share} of the gain"
        if d.low <= 0 <= d.high:
            return said + "; the interval includes 0, so this study cannot tell that part from no effect."
        return said + "; the interval excludes 0."


@dataclass
class StudyReport:
    study: dict[str, Any]
    raters: str
    sides: list[Side]
    differences: list[tuple[str, str, stats.Estimate]]  # (first, second, second's excellent share - first's)
    outcomes: dict[tuple[str, str], dict[str, int]]
    leaderboard: list[stats.Rank]
    verdicts: int
    bases: Counter  # how the per-conversation outcomes were decided: conversation | exchanges | labels -> count
    needed: list[stats.Needed]  # per checkpoint pair: conversations for the excellent gap to clear 0
    agreement: PeopleAgreement
    why_failed: dict[str, list[tuple[str, str]]]  # checkpoint -> (annotator, reason) of fails with a reason
    by_history: dict[str, list[Side]] = field(default_factory=dict)  # under history "both": condition -> sides
    history_effects: list[HistoryEffect] = field(default_factory=list)  # per checkpoint pair, under "both"

    @property
    def rated(self) -> int:
        return sum(s.turns for s in self.sides)


def build(store: Store, name: str, raters: str = "humans") -> StudyReport:
    study = store.study(name)
    seed = study["seed"]
    sessions = store.study_sessions(name)
    keep = store.takes(raters)
    lowest = store.lowest_labels(raters=raters)
    sides = {c: Side(c) for c in study["checkpoints"]}
    conditions = {h: {c: Side(c) for c in study["checkpoints"]} for h in ("own", "shared")}
    means: dict[str, dict[str, float]] = {}
    for s in sessions:
        history = (s["meta"] or {}).get("history") or "own"
        for lane in ("a", "b"):
            replies = [t for t in store.lane_replies(s, lane) if t["status"] == "ok"]
            labels = [lowest[t["id"]] for t in replies if t["id"] in lowest]
            checkpoint = (s["meta"] or {}).get("lanes", {}).get(lane) or (replies[0]["checkpoint"] if replies else None)
            if checkpoint in sides and labels:
                sides[checkpoint].conversations.append(labels)
                conditions[history][checkpoint].conversations.append(labels)
                means.setdefault(s["id"], {})[checkpoint] = sum(RANK[x] for x in labels) / len(labels)
    for side in [*sides.values(), *(x for by in conditions.values() for x in by.values())]:
        side.shares = stats.shares(side.conversations, seed)
    both = study.get("history") == "both"
    effects = [
        HistoryEffect(
            a,
            b,
            stats.difference(conditions["own"][a].conversations, conditions["own"][b].conversations, "excellent", seed),
            stats.difference(
                conditions["shared"][a].conversations, conditions["shared"][b].conversations, "excellent", seed
            ),
            stats.difference_of_differences(
                *(conditions[h][c].conversations for h in ("own", "shared") for c in (a, b)), seed=seed
            ),
        )
        for a, b in combinations(study["checkpoints"], 2)
        if both
    ]
    ids = {s["id"] for s in sessions}
    verdicts = [v for v in store.current_verdicts() if v["session_id"] in ids and keep(v["annotator"])]
    whole = [v for v in store.conversation_verdicts() if v["session_id"] in ids and keep(v["annotator"])]
    lanes = {s["id"]: (s["meta"] or {}).get("lanes") or {} for s in sessions}
    battles = [(v["session_id"], v["checkpoint_a"], v["checkpoint_b"], v["verdict"]) for v in verdicts]
    differences = [
        (a, b, stats.difference(sides[a].conversations, sides[b].conversations, "excellent", seed))
        for a, b in combinations(study["checkpoints"], 2)
    ]
    winners = _winners(whole, verdicts, means, lanes)
    return StudyReport(
        study,
        raters,
        list(sides.values()),
        differences,
        stats.conversation_outcomes([w[:3] for w in winners], study["checkpoints"]),
        stats.bradley_terry(battles, seed),
        len(verdicts),
        Counter(w[3] for w in winners),
        [
            stats.conversations_needed(
                sides[a].conversations, sides[b].conversations, names=(a, b), seed=seed, power=POWER
            )
            for a, b in combinations(study["checkpoints"], 2)
        ],
        _agreement(store, study, sessions, raters),
        why_failed(store, keep, {t for s in sessions for t in _replies(store, s)}),
        {h: list(by.values()) for h, by in conditions.items()} if both else {},
        effects,
    )


def _replies(store: Store, s: dict[str, Any]) -> list[str]:
    return [t["id"] for lane in ("a", "b") for t in store.lane_replies(s, lane)]


def _agreement(store: Store, study: dict[str, Any], sessions, raters: str) -> PeopleAgreement:
    """Agreement between the raters taken (adjudicators aside) on the study's replies."""
    kinds = store.annotator_kinds()
    keep = store.takes(raters, kinds)
    conversation_of = {}
    for s in sessions:
        for lane in ("a", "b"):
            for t in store.lane_replies(s, lane):
                conversation_of[t["id"]] = f"{s['id']}:{lane}"
    by_annotator: dict[str, dict[str, str]] = defaultdict(dict)
    for turn, who, label in store.current_ratings():
        if turn in conversation_of and keep(who) and kinds.get(who) != "adjudicator":
            by_annotator[who][turn] = label
    return people_agreement(by_annotator, conversation_of, study["seed"])


BASIS = {
    "conversation": "whole-conversation verdicts",
    "exchanges": "the majority of exchange verdicts",
    "labels": "the higher mean label",
}


def _winners(
    whole: list[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    means: dict[str, dict[str, float]],
    lanes: dict[str, dict[str, str]],
) -> list[tuple[str, str, str, str]]:
    """Per session (a, b, winner, basis): the checkpoint its whole-conversation verdicts favour where
    there are any (LIMA's authors judged whole conversations); else the one that won more of its
    exchange verdicts; else the one whose replies were labelled higher on average; a tie when neither."""

    def pick(a: str, b: str, c: Counter) -> str:
        return a if c["a"] > c["b"] else b if c["b"] > c["a"] else "tie"

    out = []
    decided = set()
    by_session: dict[str, Counter] = defaultdict(Counter)
    for v in whole:
        by_session[v["session_id"]][v["verdict"]] += 1
    for sid, c in by_session.items():
        a, b = lanes[sid].get("a"), lanes[sid].get("b")
        if a and b:
            out.append((a, b, pick(a, b, c), "conversation"))
            decided.add(sid)
    tallies: dict[str, Counter] = {}
    names: dict[str, tuple[str, str]] = {}
    for v in verdicts:
        if v["session_id"] in decided:
            continue
        tallies.setdefault(v["session_id"], Counter())[v["verdict"]] += 1
        names[v["session_id"]] = (v["checkpoint_a"], v["checkpoint_b"])
    for sid, (a, b) in names.items():
        out.append((a, b, pick(a, b, tallies[sid]), "exchanges"))
        decided.add(sid)
    for sid, by in means.items():
        if sid not in decided and len(by) == 2:
            (a, ma), (b, mb) = by.items()
            out.append((a, b, a if ma > mb else b if mb > ma else "tie", "labels"))
    return out


def document(store: Store, name: str, raters: str | None = None) -> list[StudyReport]:
    """By people; adjudicated, once an adjudicator settled a reply; and by judges when any judge rated a
    reply or gave a verdict in the study. With `raters`, by those alone."""
    if raters is not None:
        return [build(store, name, raters)]
    reports = [build(store, name, "humans")]
    if "adjudicator" in store.annotator_kinds().values():
        reports.append(build(store, name, "adjudicated"))
    if "judge" in store.annotator_kinds().values():
        judges = build(store, name, "judges")
        if judges.rated or judges.verdicts:
            reports.append(judges)
    return reports


def pct(e: stats.Estimate) -> str:
    return "n/a" if e.value != e.value else e.pct()


def _points(e: stats.Estimate) -> str:
    if e.value != e.value:
        return "n/a"
    return f"{100 * e.value:+.1f} points [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"


def sections(report: StudyReport) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) of each table: the one source of the Markdown and the HTML."""
    out, rows = [], [_label_row(s) for s in report.sides]
    out.append(
        (
            "Labels per checkpoint",
            [
                "checkpoint",
                "conversations",
                "rated turns",
                "fail",
                "pass",
                "excellent",
                "turns failed",
                "failed within 3 turns",
            ],
            rows,
            "Shares with 95% percentile intervals from 2,000 bootstrap resamples of conversations (a "
            "conversation's turns are not independent).",
        )
    )
    out.append(
        (
            "Difference in excellent share",
            ["comparison", "difference"],
            [[f"{b} − {a}", _points(e)] for a, b, e in report.differences],
            "The second checkpoint's excellent share minus the first's; each checkpoint's conversations "
            "resampled on their own. An interval that excludes 0 is a difference the study can claim.",
        )
    )
    rows = []
    for (a, b), tally in report.outcomes.items():
        n = sum(tally.values())
        lead, other = (b, a) if tally[b] > tally[a] else (a, b)
        rows.append(
            [
                f"{a} vs {b}",
                str(tally[a]),
                str(tally[b]),
                str(tally["tie"]),
                f"{lead} better in {tally[lead]} of {n}, tied in {tally['tie']}"
                + (f", worse in {tally[other]}" if tally[other] else ""),
            ]
        )
    out.append(
        (
            "Per conversation",
            ["pair", "first better", "second better", "tied", "as LIMA reports it"],
            rows,
            "A conversation goes to the checkpoint its whole-conversation verdicts favour; without those, to the "
            "one that won more of its exchange verdicts; without verdicts, to the one whose replies were labelled "
            "higher on average. Decided here by "
            + (
                "; ".join(
                    f"{BASIS[k]} for {n}"
                    for k, n in sorted(report.bases.items(), key=lambda x: list(BASIS).index(x[0]))
                )
                or "nothing yet"
            )
            + ".",
        )
    )
    out += _history_sections(report)
    out += _agreement_sections(report)
    out.append(
        (
            "Why replies failed",
            ["checkpoint", "annotator", "reason"],
            [[ck, who, reason] for ck in report.study["checkpoints"] for who, reason in report.why_failed.get(ck, [])],
            "The reasons given with a fail (key c in the app), per checkpoint.",
        )
    )
    out.append(
        (
            "How many conversations are enough",
            ["comparison", "pilot gap (excellent)", "conversations so far", "per checkpoint needed", "more"],
            [
                [
                    f"{n.second} − {n.first}",
                    "n/a" if n.gap != n.gap else f"{100 * n.gap:+.1f} points",
                    str(n.have),
                    str(n.per_checkpoint) if n.per_checkpoint else n.why,
                    "-" if n.more is None else str(n.more),
                ]
                for n in report.needed
            ],
            f"For the 95% interval of the excellent-share gap to exclude 0 at {100 * POWER:.0f}% power: studies of "
            "each size drawn from these conversations (a bootstrap of the pilot), the smallest size where that "
            "share of them clears 0. The pilot stands in for the truth, so a small pilot gives a rough figure.",
        )
    )
    out.append(
        (
            "Leaderboard (Bradley-Terry)",
            ["rank", "checkpoint", "rating", "95% interval", "verdicts"],
            [
                [str(i), r.checkpoint, f"{r.rating:.0f}", f"{r.low:.0f} to {r.high:.0f}", str(r.battles)]
                for i, r in enumerate(report.leaderboard, 1)
            ],
            f"From {report.verdicts} pairwise verdicts (ties count half), on the Elo scale (1000 is the mean; "
            "400 points is 10:1 odds), as Chatbot Arena ranks models; intervals from 1,000 resamples of "
            "conversations. A weak prior (sd 2 in log-strength) keeps an undefeated checkpoint finite.",
        )
    )
    return out


def _label_row(s: Side, *first: str) -> list[str]:
    f, n = stats.fails(s.conversations)
    k, m = stats.failed_within(s.conversations, 3)
    return [
        *first,
        s.checkpoint,
        str(len(s.conversations)),
        str(s.turns),
        *(pct(s.shares[x]) for x in LABELS),
        f"{f} of {n}",
        f"{k} of {m}",
    ]


def _history_sections(report: StudyReport) -> list[tuple[str, list[str], list[list[str]], str]]:
    """Under history "both": the labels per condition, and how much of each gap the history explains."""
    if not report.by_history:
        return []
    rows = [_label_row(s, h) for h, sides in report.by_history.items() for s in sides]
    rule = (
        "the one the verdict preferred, A's on a tie"
        if report.study["history_rule"] == "verdict"
        else "the prompt set's reference reply"
    )
    return [
        (
            "Labels per history",
            ["history", "checkpoint", "conversations", "rated turns", "fail", "pass", "excellent", "turns failed"]
            + ["failed within 3 turns"],
            rows,
            "own: each side continued from its own replies, as in LIMA; shared: after each exchange both sides "
            f"continued from one reply ({rule}). "
            "Every conversation of the plan ran under both, in a random order per annotator.",
        ),
        (
            "How much of the gain the history explains",
            ["comparison", "gap, own history", "gap, shared history", "own − shared", "in plain words"],
            [
                [f"{e.second} − {e.first}", _points(e.own), _points(e.shared), _points(e.explained), e.words()]
                for e in report.history_effects
            ],
            "Excellent-share gaps with 95% intervals; own − shared resamples the conversations of each checkpoint "
            "under each history on their own. With a shared history a side is no longer helped or hurt by what it "
            "said before, so the gap that remains is skill at each turn, and own − shared is what the history adds.",
        ),
    ]


def _agreement_sections(report: StudyReport) -> list[tuple[str, list[str], list[list[str]], str]]:
    g = report.agreement
    who = WHO.get(report.raters, report.raters)
    a = g.alpha
    alpha = (
        "n/a (every label the same)"
        if a is None
        else f"{a.value:.2f}" + ("" if a.low != a.low else f" [{a.low:.2f}, {a.high:.2f}]")
    )
    out = [
        (
            "Agreement between raters",
            ["annotators", "shared turns", "agreement", "Cohen's kappa", "weighted kappa", "tie-discounted accuracy"],
            [
                [
                    f"{p.a} / {p.b}",
                    str(p.turns),
                    share_pct(p.agreement),
                    num(p.kappa),
                    num(p.weighted_kappa),
                    share_pct(p.tie_discounted),
                ]
                for p in g.pairs
            ],
            f"On the replies two {who} rated. Weighted kappa: linear weights over fail < pass < excellent. "
            "Tie-discounted accuracy: LIMA's, a point when two agree, half when one said pass. "
            f"Krippendorff's alpha (ordinal) across all: {alpha}"
            + (
                f" ({g.raters} raters, {g.turns} shared turns, 95% interval over {g.conversations} conversations)."
                if g.pairs
                else "."
            ),
        )
    ]
    for p in g.pairs:
        out.append(
            (
                f"Confusion, {p.a} against {p.b}",
                [f"{p.a} \\ {p.b}", *LABELS],
                [[x, *(str(p.confusion[(x, y)]) for y in LABELS)] for x in LABELS],
                f"Rows: {p.a}'s label; columns: {p.b}'s, on the {p.turns} replies both rated.",
            )
        )
    return out


def _groups(reports: list[StudyReport]) -> list[tuple[str, list]]:
    return [(f"Rated by {WHO.get(r.raters, r.raters)}", sections(r)) for r in reports]


def markdown(reports: list[StudyReport]) -> str:
    st = reports[0].study
    return render.markdown(f"Study {st['name']}", _summary(st), _groups(reports))


def _summary(st: dict[str, Any]) -> str:
    return (
        f"{' vs '.join(st['checkpoints'])}; {st['conversations']} conversations per checkpoint of {st['turns']} turns; "
        f"{'blind' if st['blind'] else 'not blind'}; prompt set {st['prompt_set']} ({len(st['prompts'])} prompts); "
        f"annotators: {', '.join(st['annotators']) or 'anyone'}; seed {st['seed']}."
    )


def to_csv(reports: list[StudyReport]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        ["study", "raters", "checkpoint", "conversations", "turns", "label", "count", "share", "low", "high", "history"]
    )
    for r in reports:
        groups = (
            [("all", r.sides), *r.by_history.items()] if r.by_history else [(r.study.get("history", "own"), r.sides)]
        )
        for history, s in ((h, x) for h, sides in groups for x in sides):
            counts = Counter(x for c in s.conversations for x in c)
            for label in LABELS:
                e = s.shares[label]
                w.writerow(
                    [
                        r.study["name"],
                        r.raters,
                        s.checkpoint,
                        len(s.conversations),
                        s.turns,
                        label,
                        counts[label],
                        *("" if v != v else f"{v:.4f}" for v in (e.value, e.low, e.high)),
                        history,
                    ]
                )
    return out.getvalue()


def figure(reports: list[StudyReport], path: Path | None = None) -> bytes:
    """Per report a row: label shares per checkpoint with 95% intervals, and the leaderboard. PNG bytes
    (written to `path` too when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = [r for r in reports if r.by_history]
    fig, axes = plt.subplots(
        len(reports) + len(histories),
        2,
        figsize=(11, 3.8 * (len(reports) + len(histories))),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.4, 1]},
    )
    for report, (ax, ax2) in zip(histories, axes[len(reports) :]):
        _history_axes(report, ax, ax2)
    for report, (ax, ax2) in zip(reports, axes):
        who = f" (rated by {WHO.get(report.raters, report.raters)})"
        width = 0.8 / len(LABELS)
        for k, label in enumerate(LABELS):
            xs = [i + (k - 1) * width for i in range(len(report.sides))]
            es = [s.shares[label] for s in report.sides]
            vals = [0 if e.value != e.value else 100 * e.value for e in es]
            err = [
                [max(v - 100 * e.low, 0) if e.low == e.low else 0 for v, e in zip(vals, es)],
                [max(100 * e.high - v, 0) if e.high == e.high else 0 for v, e in zip(vals, es)],
            ]
            ax.bar(xs, vals, width, yerr=err, capsize=3, color=COLORS[label], label=label.capitalize())
        ax.set_xticks(
            range(len(report.sides)),
            [f"{s.checkpoint}\n({len(s.conversations)} conv., {s.turns} turns)" for s in report.sides],
        )
        ax.set_ylim(0, 100)
        ax.set_ylabel("share of rated turns (%)")
        ax.set_title("Labels per checkpoint, 95% intervals" + who)
        ax.legend(frameon=False, ncol=3, loc="upper left")
        board = report.leaderboard
        if board:
            names = [r.checkpoint for r in board][::-1]
            vals = [r.rating for r in board][::-1]
            ax2.errorbar(
                vals,
                names,
                xerr=[[v - r.low for v, r in zip(vals, board[::-1])], [r.high - v for v, r in zip(vals, board[::-1])]],
                fmt="o",
                capsize=4,
            )
            ax2.axvline(stats.ELO_BASE, color="#999", lw=0.8, ls="--")
            ax2.set_xlabel("Bradley-Terry rating (Elo scale)")
        else:
            ax2.text(0.5, 0.5, "no pairwise verdicts yet", ha="center", va="center", transform=ax2.transAxes)
            ax2.set_yticks([])
        ax2.set_title("Leaderboard, 95% intervals" + who)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def _history_axes(report: StudyReport, ax, ax2) -> None:
    """Excellent share per checkpoint under each history; and each pair's gap under each, with own − shared."""
    who = f" (rated by {WHO.get(report.raters, report.raters)})"
    colors = {"own": "#4c72b0", "shared": "#dd8452"}
    for k, (history, sides) in enumerate(report.by_history.items()):
        xs = [i + (k - 0.5) * 0.38 for i in range(len(sides))]
        es = [x.shares["excellent"] for x in sides]
        vals = [0 if e.value != e.value else 100 * e.value for e in es]
        err = [
            [max(v - 100 * e.low, 0) if e.low == e.low else 0 for v, e in zip(vals, es)],
            [max(100 * e.high - v, 0) if e.high == e.high else 0 for v, e in zip(vals, es)],
        ]
        ax.bar(xs, vals, 0.38, yerr=err, capsize=3, color=colors[history], label=f"{history} history")
    ax.set_xticks(range(len(report.study["checkpoints"])), report.study["checkpoints"])
    ax.set_ylim(0, 100)
    ax.set_ylabel("excellent share (%)")
    ax.set_title("Excellent share per history, 95% intervals" + who)
    ax.legend(frameon=False, loc="upper left")
    rows = [
        (f"{e.second} − {e.first}: {what}", est)
        for e in report.history_effects
        for what, est in (("own", e.own), ("shared", e.shared), ("own − shared", e.explained))
    ][::-1]
    ys = range(len(rows))
    vals = [0 if e.value != e.value else 100 * e.value for _, e in rows]
    ax2.errorbar(
        vals,
        list(ys),
        xerr=[
            [max(v - 100 * e.low, 0) if e.low == e.low else 0 for v, (_, e) in zip(vals, rows)],
            [max(100 * e.high - v, 0) if e.high == e.high else 0 for v, (_, e) in zip(vals, rows)],
        ],
        fmt="o",
        capsize=4,
    )
    ax2.set_yticks(list(ys), [name for name, _ in rows])
    ax2.axvline(0, color="#999", lw=0.8, ls="--")
    ax2.set_xlabel("excellent-share gap (points)")
    ax2.set_title("What the history adds" + who)


def to_html(reports: list[StudyReport], chart: bytes | None = None) -> str:
    """One self-contained page: the summary, the chart (`chart`, PNG bytes, drawn when not given) and every table."""
    st = reports[0].study
    return render.html_page(
        f"Study {st['name']}",
        _summary(st),
        chart if chart is not None else figure(reports),
        "label shares and leaderboard",
        _groups(reports),
        "Written by limachat (limachat report --study).",
    )


def write(
    reports: list[StudyReport], *, html_path: Path | None = None, png: Path | None = None, csv_path: Path | None = None
) -> None:
    """The files asked for; the chart is drawn once for the PNG and the page alike."""
    chart = figure(reports, png) if (png or html_path) else None
    if html_path:
        Path(html_path).write_text(to_html(reports, chart))
    if csv_path:
        Path(csv_path).write_text(to_csv(reports))
