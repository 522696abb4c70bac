"""LIMA section 6's analysis per checkpoint, and its Figure 7 as a stacked bar chart.

A turn is counted once, with the lowest current label among its annotators (as in export).
A conversation is one session side (a chat session, or side a / b of a compare session) followed
down its latest branch; "first fail within 3" and per-conversation winners use that branch.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limachat.dialogues.agreement import (
    JudgeAgreement,
    PeopleAgreement,
    judge_agreement,
    people_agreement,
    people_markdown,
    tie_discounted,
    win_rates,
)
from limachat.dialogues.repeats import REPEAT_AT
from limachat.dialogues.store import LABELS, RANK, Store
from limachat.dialogues.values import COLORS, num, pct
from limachat.layout import VARIANTS, Home, training_record

WHO = {"humans": "people", "judges": "judges", "all": "raters", "adjudicated": "people"}


@dataclass
class CheckpointStats:
    checkpoint: str
    counts: Counter = field(default_factory=Counter)  # label -> assistant turns
    by_turn: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))  # exchange -> label counts
    conversations: int = 0
    early_fail: int = 0  # conversations whose first fail is within their first 3 assistant turns
    fluency: float | None = None  # mean of its replies' fluency (the base's NLL per token; lower is better)
    scored: int = 0  # replies with a fluency score
    repeats: int = 0  # follow-up replies that mostly give back an earlier reply (limachat.dialogues.repeats)
    followups: int = 0  # follow-up replies with a repeat score

    @property
    def rated(self) -> int:
        return sum(self.counts.values())

    @property
    def repeat_rate(self) -> float | None:
        return self.repeats / self.followups if self.followups else None

    def share(self, label: str) -> float:
        return self.counts[label] / self.rated if self.rated else 0.0


@dataclass
class Report:
    raters: str  # humans | judges | all: whose ratings and verdicts it counts
    checkpoints: dict[str, CheckpointStats]
    winners: list[dict[str, Any]]  # per compare conversation
    agreement: PeopleAgreement  # between the raters taken (adjudicators aside), per pair and across all
    verdict_agreement: list[dict[str, Any]]  # per annotator pair: pairs, tie-discounted accuracy
    why_failed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # checkpoint -> (annotator, reason)


def build(store: Store, raters: str = "humans") -> Report:
    """The report over the ratings and verdicts of `raters` (humans, judges or all)."""
    # Three scans in SQLite (the tree through its covering index, the newest reply per conversation,
    # the current ratings), then plain Python.
    turns = {row[0]: row for row in store.tree()}
    latest = store.latest_replies()
    keep = store.takes(raters)
    by_annotator: dict[str, dict[str, str]] = defaultdict(dict)
    rated = []  # current ratings of finished replies
    for turn, annotator, label in store.current_ratings():
        t = turns.get(turn)
        if t is not None and t[2] == "assistant" and t[3] == "ok" and keep(annotator):
            by_annotator[annotator][turn] = label
            rated.append((turn, annotator, label))
    lowest = store.lowest_labels(ratings=rated, raters=raters)  # turn -> the lowest current label of its raters
    stats: dict[str, CheckpointStats] = {}

    def of(name: str) -> CheckpointStats:
        if name not in stats:
            stats[name] = CheckpointStats(name)
        return stats[name]

    for turn, label in lowest.items():
        s = of(turns[turn][4] or "imported")
        s.counts[label] += 1
        s.by_turn[turns[turn][5]][label] += 1

    # Conversations: each (session, lane) followed down its latest branch, counting that lane's replies only
    # (under a shared history the branch passes through the reply both sides continued from).
    lane_scores: dict[str, dict[str, tuple[str, float]]] = defaultdict(dict)
    for session_id, lane, leaf in latest:
        labelled, node = [], leaf
        while node is not None:
            if node in lowest and (turns[node][7] or "") == lane:
                labelled.append(lowest[node])
            node = turns[node][1]
        labelled.reverse()
        if not labelled:
            continue
        checkpoint = turns[leaf][4] or "imported"
        s = of(checkpoint)
        s.conversations += 1
        s.early_fail += "fail" in labelled[:3]
        lane_scores[session_id][lane] = (checkpoint, sum(RANK[lab] for lab in labelled) / len(labelled))

    for checkpoint, mean, n in store.fluency_by_checkpoint():
        s = of(checkpoint)
        s.fluency, s.scored = mean, n
    for checkpoint, flagged, n in store.repeats_by_checkpoint(REPEAT_AT):
        s = of(checkpoint)
        s.repeats, s.followups = flagged, n

    winners = _winners(store, lane_scores, keep)
    conversation_of = {t: f"{row[6]}:{row[7] or ''}" for t, row in turns.items() if t in lowest}
    kinds = store.annotator_kinds()
    independent = {who: labels for who, labels in by_annotator.items() if kinds.get(who) != "adjudicator"}
    agreement = people_agreement(independent, conversation_of)
    return Report(raters, stats, winners, agreement, _verdict_agreement(store, keep), why_failed(store, keep))


def why_failed(store: Store, keep, turns: set[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """checkpoint -> (annotator, reason) of every current fail that gives a reason (of `turns`, when given)."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for turn, checkpoint, who, label, reason in store.reasons():
        if label == "fail" and keep(who) and (turns is None or turn in turns):
            out[checkpoint].append((who, reason))
    return dict(out)


def _winners(store: Store, lane_scores, keep) -> list[dict[str, Any]]:
    """Per compare session: the better side by its whole-conversation verdicts, else by its exchange
    verdicts, else by the mean label; `basis` says which."""
    whole: dict[str, Counter] = defaultdict(Counter)
    for v in store.conversation_verdicts():
        if keep(v["annotator"]):
            whole[v["session_id"]][v["verdict"]] += 1
    out = []
    for sid, c in sorted(whole.items()):
        lanes = (store.session(sid)["meta"] or {}).get("lanes") or {}
        a, b = lanes.get("a", "?"), lanes.get("b", "?")
        winner = a if c["a"] > c["b"] else b if c["b"] > c["a"] else "tie"
        out.append(
            {
                "session": sid,
                "a": a,
                "b": b,
                "winner": winner,
                "basis": f"conversation verdicts {c['a']}-{c['b']}-{c['tie']} (a-b-tie)",
            }
        )
    verdicts = defaultdict(Counter)
    names: dict[str, tuple[str, str]] = {}
    for v in store.current_verdicts():
        if not keep(v["annotator"]):
            continue
        verdicts[v["session_id"]][v["verdict"]] += 1
        names[v["session_id"]] = (v["checkpoint_a"], v["checkpoint_b"])
    both_rated = {s for s, lanes in lane_scores.items() if {"a", "b"} <= set(lanes)}
    for sid in sorted((set(verdicts) | both_rated) - set(whole)):
        if sid in verdicts:
            a, b = names[sid]
            c = verdicts[sid]
            winner = a if c["a"] > c["b"] else b if c["b"] > c["a"] else "tie"
            ties = c["tie"] + c["inconsistent"]
            out.append(
                {
                    "session": sid,
                    "a": a,
                    "b": b,
                    "winner": winner,
                    "basis": f"verdicts {c['a']}-{c['b']}-{ties} (a-b-tie)",
                }
            )
        else:
            (a, sa), (b, sb) = lane_scores[sid]["a"], lane_scores[sid]["b"]
            winner = a if sa > sb else b if sb > sa else "tie"
            out.append({"session": sid, "a": a, "b": b, "winner": winner, "basis": f"mean label {sa:.2f} vs {sb:.2f}"})
    return out


def _verdict_agreement(store: Store, keep) -> list[dict[str, Any]]:
    by_pair: dict[tuple, dict[str, str]] = defaultdict(dict)
    for v in store.current_verdicts():
        if not keep(v["annotator"]):
            continue
        by_pair[(v["turn_a"], v["turn_b"])][v["annotator"]] = v["verdict"]
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for votes in by_pair.values():
        names = sorted(votes)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                scores[(a, b)].append(tie_discounted(votes[a], votes[b]))
    return [
        {"annotators": f"{a} / {b}", "pairs": len(s), "accuracy": sum(s) / len(s)}
        for (a, b), s in sorted(scores.items())
    ]


def ordered(report: Report) -> list[CheckpointStats]:
    """zero-shot, then dialogue (the paper's order), then any other checkpoint by name."""
    first = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(report.checkpoints.values(), key=lambda s: (first.get(s.checkpoint, len(first)), s.checkpoint))


def markdown(report: Report, heldout: list[dict[str, Any]] | None = None) -> str:
    stats = ordered(report)
    lines = [
        "| checkpoint | rated turns | fail | pass | excellent | fails | first fail within 3 | fluency (NLL/token) | repeats |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stats:
        fluency = f"{s.fluency:.2f} ({s.scored})" if s.fluency is not None else "-"
        repeats = f"{pct(s.repeat_rate)} ({s.repeats}/{s.followups})" if s.followups else "-"
        lines.append(
            f"| {s.checkpoint} | {s.rated} | {pct(s.share('fail'))} | {pct(s.share('pass'))} | "
            f"{pct(s.share('excellent'))} | {s.counts['fail']}/{s.rated} | {s.early_fail} of {s.conversations} | "
            f"{fluency} | {repeats} |"
        )
    lines += [
        "",
        "Fluency: the base model's mean negative log-likelihood per token of a checkpoint's replies "
        "(lower reads more fluently; word salad scores about 4 and above), with the number of replies scored.",
        "",
        f"Repeats: the follow-up replies (turn 2 on) of which {REPEAT_AT:.0%} or more of the word trigrams "
        "already appeared in an earlier reply of the same conversation: the reply gave back an earlier answer "
        "instead of answering the new question (lower is better).",
    ]
    if heldout:
        lines += [
            "",
            "Held-out loss: NLL per token of two held-out multi-turn chains' replies from turn 2 on "
            "(lower is better), written by `limachat train`:",
            "",
            "| checkpoint | held-out loss | its base | tokens | after epoch |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {h['checkpoint']} | {h['loss']:.3f} | {num(h.get('base_loss'))} | {h['tokens']} | {h['epoch']} |"
            for h in heldout
        ]
    turns = sorted({i for s in stats for i in s.by_turn})
    if turns:
        lines += [
            "",
            "Excellent share by turn index:",
            "",
            "| checkpoint | " + " | ".join(f"turn {i}" for i in turns) + " |",
            "|---|" + "---:|" * len(turns),
        ]
        for s in stats:
            cells = []
            for i in turns:
                c = s.by_turn.get(i, Counter())
                n = sum(c.values())
                cells.append(f"{pct(c['excellent'] / n)} ({n})" if n else "-")
            lines.append(f"| {s.checkpoint} | " + " | ".join(cells) + " |")
    if report.winners:
        lines += ["", "| session | a | b | better | from |", "|---|---|---|---|---|"]
        lines += [f"| {w['session']} | {w['a']} | {w['b']} | {w['winner']} | {w['basis']} |" for w in report.winners]
    if report.agreement.pairs:
        lines += ["", *people_markdown(report.agreement, WHO.get(report.raters, "raters"))]
    if report.why_failed:
        lines += ["", "Why replies failed (the reasons given with a fail, key c):", ""]
        for s in stats:
            for who, reason in report.why_failed.get(s.checkpoint, []):
                lines.append(f"- {s.checkpoint}: {reason} ({who})")
        lines += [
            f"- {ck}: {reason} ({who})"
            for ck, said in sorted(report.why_failed.items())
            if ck not in report.checkpoints
            for who, reason in said
        ]
    if report.verdict_agreement:
        lines += ["", "| annotators | shared verdicts | tie-discounted accuracy |", "|---|---:|---:|"]
        lines += [f"| {a['annotators']} | {a['pairs']} | {pct(a['accuracy'])} |" for a in report.verdict_agreement]
    return "\n".join(lines) + "\n"


def heldout(home: Path) -> list[dict[str, Any]]:
    """The held-out loss each trained checkpoint under <home>/checkpoints/ recorded in training.json."""
    out = []
    for folder in sorted(Home(Path(home)).checkpoints.glob("*/")):
        record = training_record(folder) or {}
        if isinstance(record.get("heldout"), dict):
            out.append({"checkpoint": folder.name, "epoch": "?", **record["heldout"]})
    first = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(out, key=lambda h: (first.get(h["checkpoint"], 2), h["checkpoint"]))


def to_csv(*reports: Report) -> str:
    """Label counts and shares per checkpoint and turn, a block of rows per report (`raters`)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "raters",
            "checkpoint",
            "turn",
            "rated",
            "fail",
            "pass",
            "excellent",
            "fail_share",
            "pass_share",
            "excellent_share",
        ]
    )
    for report in reports:
        for s in ordered(report):
            rows = [("all", s.counts)] + [(str(i), s.by_turn[i]) for i in sorted(s.by_turn)]
            for turn, c in rows:
                n = sum(c.values())
                w.writerow(
                    [
                        report.raters,
                        s.checkpoint,
                        turn,
                        n,
                        c["fail"],
                        c["pass"],
                        c["excellent"],
                        *(f"{c[k] / n:.4f}" if n else "" for k in LABELS),
                    ]
                )
    return out.getvalue()


@dataclass
class Document:
    """Everything `limachat report` shows: Figure 7 by people, by judges (when any judge rated), and
    how far the judges agree with the people."""

    humans: Report
    judges: Report | None
    agreements: list[JudgeAgreement]
    rates: list[dict[str, Any]]

    @property
    def reports(self) -> list[Report]:
        return [r for r in (self.humans, self.judges) if r is not None]

    @property
    def rated(self) -> bool:
        return any(s.rated for r in self.reports for s in r.checkpoints.values())


def document(store: Store, raters: str | None = None) -> Document:
    """By people, and by judges once any judge rated; with `raters`, by those alone."""
    if raters is not None:
        return Document(build(store, raters), None, judge_agreement(store), win_rates(store))
    judges = None
    if "judge" in store.annotator_kinds().values():
        judges = build(store, "judges")
    return Document(build(store, "humans"), judges, judge_agreement(store), win_rates(store))


def render(doc: Document, heldout: list[dict[str, Any]] | None = None) -> str:
    from limachat.dialogues import agreement

    if doc.judges is None:
        return markdown(doc.humans, heldout)
    return (
        "## Rated by people\n\n"
        + markdown(doc.humans, heldout)
        + "\n## Rated by LLM judges (`limachat judge`)\n\n"
        + markdown(doc.judges)
        + "\n## Judges against people\n\n"
        + agreement.markdown(doc.agreements, doc.rates)
    )


def figure7(reports: Report | list[Report], path: Path) -> None:
    """Per report (people, judges), a row: stacked bars of label shares per checkpoint, and the
    excellent share by turn index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [reports] if isinstance(reports, Report) else reports
    fig, axes = plt.subplots(
        len(reports), 2, figsize=(10, 3.6 * len(reports)), gridspec_kw={"width_ratios": [1.1, 1]}, squeeze=False
    )
    for report, (ax, ax2) in zip(reports, axes):
        who = {"humans": "people", "judges": "LLM judges", "all": "everyone", "adjudicated": "people, adjudicated"}[
            report.raters
        ]
        _figure7_row(report, ax, ax2, f" (rated by {who})" if len(reports) > 1 else "")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _figure7_row(report: Report, ax, ax2, title: str) -> None:
    stats = ordered(report)
    left = [0.0] * len(stats)
    names = [f"{s.checkpoint}\n({s.rated} turns)" for s in stats]
    for label in LABELS:
        shares = [100 * s.share(label) for s in stats]
        ax.barh(names, shares, left=left, color=COLORS[label], label=label.capitalize())
        for y, (x0, w) in enumerate(zip(left, shares)):
            if w >= 6:
                ax.text(x0 + w / 2, y, f"{w:.1f}%", ha="center", va="center", fontsize=9, color="white")
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of rated assistant turns (%)")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    ax.set_title("Labels per checkpoint" + title)
    for s in stats:
        turns = sorted(s.by_turn)
        ax2.plot(
            turns,
            [100 * s.by_turn[i]["excellent"] / sum(s.by_turn[i].values()) for i in turns],
            marker="o",
            label=s.checkpoint,
        )
    ax2.set_ylim(0, 100)
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlabel("turn index")
    ax2.set_ylabel("excellent (%)")
    ax2.set_title("Excellent share by turn" + title)
    if stats:
        ax2.legend(frameon=False)
