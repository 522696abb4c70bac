"""How far each LLM judge agrees with the people, and who wins each checkpoint pair by whom.

On the turns both rated (the people's label being the lowest among them), per judge: plain agreement,
Cohen's kappa, the confusion matrix, and LIMA's tie-discounted accuracy (Zhou et al., 2023, appendix:
a point when two annotators agree, half a point when exactly one of them chose the tie). For labels,
`pass` sits where the tie does, between fail and excellent: half a point when the two labels are one
step apart. For pairwise verdicts the same rule applies as written, a judge's `inconsistent` counting
as its tie (as MT-Bench counts it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from limachat.dialogues.values import LABELS, RANK, num, pct


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def tie_discounted(x: str, y: str) -> float:
    """LIMA's annotator agreement on preferences: 1 when equal, 0.5 when exactly one is a tie (a judge's
    `inconsistent` counts as a tie)."""
    x, y = ("tie" if v == "inconsistent" else v for v in (x, y))
    if x == y:
        return 1.0
    return 0.5 if "tie" in (x, y) else 0.0


def label_credit(x: str, y: str) -> float:
    """LIMA's tie-discounted point for two labels, `pass` in the tie's place."""
    return {0: 1.0, 1: 0.5}.get(abs(RANK[x] - RANK[y]), 0.0)


@dataclass
class JudgeAgreement:
    judge: str
    turns: int = 0  # turns both the judge and a person rated
    agreement: float | None = None
    kappa: float | None = None
    tie_discounted: float | None = None
    confusion: Counter = field(default_factory=Counter)  # (person's label, judge's label) -> turns
    pairs: int = 0  # compare pairs both gave a verdict on
    verdict_accuracy: float | None = None  # tie-discounted, on those pairs


def judge_agreement(store) -> list[JudgeAgreement]:
    kinds = store.annotator_kinds()
    judges = sorted(n for n, k in kinds.items() if k == "judge")
    ratings = store.current_ratings()
    people = store.lowest_labels(ratings=ratings, raters="humans")
    by_pair: dict[tuple, dict[str, str]] = defaultdict(dict)  # (turn a, turn b) -> annotator -> verdict, read once
    for v in store.current_verdicts():
        by_pair[(v["turn_a"], v["turn_b"])][v["annotator"]] = v["verdict"]
    out = []
    for judge in judges:
        mine = {t: lab for t, who, lab in ratings if who == judge}
        both = sorted(set(mine) & set(people))
        a = JudgeAgreement(judge, len(both))
        if both:
            h, j = [people[t] for t in both], [mine[t] for t in both]
            a.agreement = sum(x == y for x, y in zip(h, j)) / len(both)
            a.kappa = cohen_kappa(h, j)
            a.tie_discounted = sum(label_credit(x, y) for x, y in zip(h, j)) / len(both)
            a.confusion = Counter(zip(h, j))
        a.pairs, a.verdict_accuracy = _verdicts_against_people(by_pair, judge, kinds)
        if a.turns or a.pairs:
            out.append(a)
    return out


def _verdicts_against_people(
    by_pair: dict[tuple, dict[str, str]], judge: str, kinds: dict[str, str]
) -> tuple[int, float | None]:
    scores = [
        tie_discounted(votes[judge], votes[who])
        for votes in by_pair.values()
        if judge in votes
        for who in votes
        if kinds.get(who, "human") == "human"
    ]
    return len(scores), (sum(scores) / len(scores) if scores else None)


def win_rates(store) -> list[dict[str, Any]]:
    """Per rater kind (humans, judges) and checkpoint pair: verdicts, wins each way, ties (judges'
    inconsistent ones among them), and the first checkpoint's win rate counting a tie as half."""
    kinds = store.annotator_kinds()
    tally: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
    for v in store.current_verdicts():
        kind = kinds.get(v["annotator"], "human")
        x, y = v["checkpoint_a"] or "?", v["checkpoint_b"] or "?"
        verdict = v["verdict"]
        if x > y:  # one row per unordered pair
            x, y, verdict = y, x, {"a": "b", "b": "a"}.get(verdict, verdict)
        c = tally[("humans" if kind == "human" else "judges", x, y)]
        c[verdict] += 1
    out = []
    for (raters, x, y), c in sorted(tally.items()):
        n = sum(c.values())
        ties = c["tie"] + c["inconsistent"]
        out.append(
            {
                "raters": raters,
                "x": x,
                "y": y,
                "verdicts": n,
                "x_wins": c["a"],
                "y_wins": c["b"],
                "ties": ties,
                "inconsistent": c["inconsistent"],
                "x_rate": (c["a"] + ties / 2) / n,
            }
        )
    return out


def markdown(agreements: list[JudgeAgreement], rates: list[dict[str, Any]]) -> str:

    lines: list[str] = []
    if not agreements:
        lines.append("No turn or compare pair has been rated by both a judge and a person yet.")
    else:
        lines += [
            "Judges against people (turns both rated; the people's label is the lowest among them):",
            "",
            "| judge | shared turns | agreement | Cohen's kappa | tie-discounted accuracy | shared verdicts | verdict accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for a in agreements:
            lines.append(
                f"| {a.judge} | {a.turns} | {pct(a.agreement)} | {num(a.kappa)} | {pct(a.tie_discounted)} | "
                f"{a.pairs} | {pct(a.verdict_accuracy)} |"
            )
        for a in agreements:
            if a.turns:
                lines += [
                    "",
                    f"Confusion, {a.judge} (rows: people, columns: judge):",
                    "",
                    "| person \\ judge | " + " | ".join(LABELS) + " |",
                    "|---|" + "---:|" * len(LABELS),
                ]
                lines += [f"| {h} | " + " | ".join(str(a.confusion[(h, j)]) for j in LABELS) + " |" for h in LABELS]
    if rates:
        lines += [
            "",
            "Win rates per checkpoint pair (a tie counts half; judges' inconsistent verdicts count as ties):",
            "",
            "| raters | checkpoint x | checkpoint y | verdicts | x wins | y wins | ties (inconsistent) | x win rate |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['raters']} | {r['x']} | {r['y']} | {r['verdicts']} | {r['x_wins']} | {r['y_wins']} | "
            f"{r['ties']} ({r['inconsistent']}) | {pct(r['x_rate'])} |"
            for r in rates
        ]
    return "\n".join(lines) + ("\n" if lines else "")
