"""How far people agree with each other, how far each LLM judge agrees with the people, and who wins each
checkpoint pair by whom.

Between people, on the turns two or more of them rated: per pair, raw agreement, Cohen's kappa weighted
for ordered labels (scikit-learn's, linear weights: fail and excellent are further apart than either is
from pass), LIMA's tie-discounted accuracy and the confusion matrix; across everyone, Krippendorff's
alpha for ordinal data (the krippendorff package), with a 95% interval from resampling conversations.

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

from limachat.dialogues import stats
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
class PairAgreement:
    a: str
    b: str
    turns: int  # turns both rated
    agreement: float
    kappa: float | None  # Cohen's, unweighted
    weighted_kappa: float | None  # Cohen's, linear weights over fail < pass < excellent
    tie_discounted: float
    confusion: Counter  # (a's label, b's label) -> turns


@dataclass
class PeopleAgreement:
    pairs: list[PairAgreement]
    raters: int = 0  # annotators with a turn another also rated
    turns: int = 0  # turns two or more rated
    conversations: int = 0  # the conversations those turns are in (the bootstrap's clusters)
    alpha: stats.Estimate | None = None  # Krippendorff's, ordinal; None when undefined (one label only)


def weighted_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa with linear weights over the ordered labels (None when every label is the same:
    there is no chance agreement to correct)."""
    from sklearn.metrics import cohen_kappa_score

    if len(set(a) | set(b)) < 2:
        return None
    return float(cohen_kappa_score([RANK[x] for x in a], [RANK[y] for y in b], labels=[0, 1, 2], weights="linear"))


def _alpha(columns: list[dict[str, str]], raters: list[str]) -> float:
    """Krippendorff's alpha (ordinal) over turns (`columns`: annotator -> label); nan when undefined."""
    import krippendorff
    import numpy as np

    data = np.array([[RANK[c[r]] if r in c else np.nan for c in columns] for r in raters], dtype=float)
    if len(set(data[~np.isnan(data)].tolist())) < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=[0, 1, 2]))


def people_agreement(
    by_annotator: dict[str, dict[str, str]], conversation_of: dict[str, str], seed: int = 0
) -> PeopleAgreement:
    """Agreement between annotators (`by_annotator`: name -> turn -> label) on the turns two or more of them
    rated; `conversation_of`: turn -> its conversation, the unit the alpha's interval resamples."""
    names = sorted(by_annotator)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(set(by_annotator[a]) & set(by_annotator[b]))
            if not both:
                continue
            la, lb = [by_annotator[a][t] for t in both], [by_annotator[b][t] for t in both]
            pairs.append(
                PairAgreement(
                    a,
                    b,
                    len(both),
                    sum(x == y for x, y in zip(la, lb)) / len(both),
                    cohen_kappa(la, lb),
                    weighted_kappa(la, lb),
                    sum(label_credit(x, y) for x, y in zip(la, lb)) / len(both),
                    Counter(zip(la, lb)),
                )
            )
    raters_of: dict[str, dict[str, str]] = defaultdict(dict)
    for who, labels in by_annotator.items():
        for turn, label in labels.items():
            raters_of[turn][who] = label
    shared = {t: r for t, r in raters_of.items() if len(r) >= 2}
    out = PeopleAgreement(pairs, len({w for r in shared.values() for w in r}), len(shared))
    if not shared:
        return out
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for turn in sorted(shared):
        groups[conversation_of.get(turn, turn)].append(shared[turn])
    clusters = list(groups.values())
    raters = sorted({w for r in shared.values() for w in r})
    out.conversations = len(clusters)
    point = _alpha([c for g in clusters for c in g], raters)
    if point == point:
        low, high = stats.cluster_interval(
            len(clusters), lambda idx: _alpha([c for n in idx for c in clusters[n]], raters), seed
        )
        out.alpha = stats.Estimate(point, low, high)
    return out


def people_markdown(agreement: PeopleAgreement, who: str = "people") -> list[str]:
    """The table of pairs, the alpha line and a confusion matrix per pair, as Markdown lines."""
    if not agreement.pairs:
        return [f"No turn has been rated by two {who} yet: no agreement between them to show."]
    lines = [
        f"Agreement between {who} (turns both rated):",
        "",
        "| annotators | shared turns | agreement | Cohen's kappa | weighted kappa | tie-discounted accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p.a} / {p.b} | {p.turns} | {pct(p.agreement)} | {num(p.kappa)} | {num(p.weighted_kappa)} | "
        f"{pct(p.tie_discounted)} |"
        for p in agreement.pairs
    ]
    a = agreement.alpha
    lines += [
        "",
        f"Krippendorff's alpha (ordinal), {agreement.raters} {who} on {agreement.turns} shared turns in "
        f"{agreement.conversations} conversations: "
        + (
            "n/a (every label the same)"
            if a is None
            else f"{a.value:.2f}"
            + ("" if a.low != a.low else f" [{a.low:.2f}, {a.high:.2f}], 95% interval over conversations")
        ),
    ]
    for p in agreement.pairs:
        lines += [
            "",
            f"Confusion, {p.a} (rows) against {p.b} (columns):",
            "",
            f"| {p.a} \\ {p.b} | " + " | ".join(LABELS) + " |",
            "|---|" + "---:|" * len(LABELS),
        ]
        lines += [f"| {x} | " + " | ".join(str(p.confusion[(x, y)]) for y in LABELS) + " |" for x in LABELS]
    return lines


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
