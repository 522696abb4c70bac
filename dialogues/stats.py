"""The statistics of a study, with no store and no app: plain lists in, numbers out.

A conversation is the list of its assistant turns' labels, in order. Turns of one conversation are
not independent (a model that loses the thread fails every turn after), so every interval here is a
percentile bootstrap that resamples *conversations* (clusters), never turns. The bootstrap is
scipy's; the Bradley-Terry fit is scipy's L-BFGS on the model's log-likelihood. Every draw is seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from limachat.dialogues.values import LABELS

RESAMPLES = 2000
CONFIDENCE = 0.95
ELO_SCALE = 400 / math.log(10)  # Elo points per unit of Bradley-Terry log-strength
ELO_BASE = 1000.0


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def pct(self) -> str:
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def _bootstrap(
    samples: tuple[np.ndarray, ...], statistic, seed: int, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """The percentile interval of `statistic(*index arrays)` with each sample's conversations resampled
    independently. Too few conversations to resample (fewer than 2 in a sample): the interval is the
    value itself, said plainly rather than invented."""
    from scipy.stats import bootstrap

    point = float(statistic(*samples))
    if any(len(s) < 2 for s in samples) or math.isnan(point):
        return point, point
    res = bootstrap(
        samples,
        statistic,
        paired=False,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):  # every resample gave the same value
        return point, point
    return low, high


def _counts(conversations: list[list[str]], label: str) -> tuple[np.ndarray, np.ndarray]:
    """Per conversation: turns with `label`, and turns."""
    hits = np.array([sum(x == label for x in c) for c in conversations], dtype=float)
    turns = np.array([len(c) for c in conversations], dtype=float)
    return hits, turns


def share(conversations: list[list[str]], label: str, seed: int = 0) -> Estimate:
    """The share of all turns labelled `label`, with its 95% interval over conversations."""
    conversations = [c for c in conversations if c]
    hits, turns = _counts(conversations, label)
    if not turns.sum():
        return Estimate(math.nan, math.nan, math.nan)

    def stat(i, axis=-1):
        return hits[i].sum(axis=axis) / turns[i].sum(axis=axis)

    index = np.arange(len(conversations))
    return Estimate(float(stat(index)), *_bootstrap((index,), stat, seed))


def shares(conversations: list[list[str]], seed: int = 0) -> dict[str, Estimate]:
    return {label: share(conversations, label, seed) for label in LABELS}


def difference(first: list[list[str]], second: list[list[str]], label: str = "excellent", seed: int = 0) -> Estimate:
    """`second`'s share of `label` minus `first`'s, each checkpoint's conversations resampled on their own."""
    first, second = [c for c in first if c], [c for c in second if c]
    (h1, n1), (h2, n2) = _counts(first, label), _counts(second, label)
    if not (n1.sum() and n2.sum()):
        return Estimate(math.nan, math.nan, math.nan)

    def stat(i, j, axis=-1):
        return h2[j].sum(axis=axis) / n2[j].sum(axis=axis) - h1[i].sum(axis=axis) / n1[i].sum(axis=axis)

    i, j = np.arange(len(first)), np.arange(len(second))
    return Estimate(float(stat(i, j)), *_bootstrap((i, j), stat, seed))


def fails(conversations: list[list[str]]) -> tuple[int, int]:
    """(turns failed, turns): LIMA's "15 of 42"."""
    return sum(c.count("fail") for c in conversations), sum(len(c) for c in conversations)


def failed_within(conversations: list[list[str]], turns: int = 3) -> tuple[int, int]:
    """(conversations with a fail among their first `turns` turns, conversations): LIMA's "6 of 10"."""
    rated = [c for c in conversations if c]
    return sum("fail" in c[:turns] for c in rated), len(rated)


def conversation_outcomes(
    winners: list[tuple[str, str, str]], order: list[str] | None = None
) -> dict[tuple[str, str], dict[str, int]]:
    """Per checkpoint pair (first, second in `order`, else by name), from per-conversation results
    `(a, b, winner)` (winner: a checkpoint's name or "tie"): how many conversations each won and how
    many tied: LIMA's "better in 7 of 10, tied in 3"."""
    rank = {name: i for i, name in enumerate(order or [])}
    out: dict[tuple[str, str], dict[str, int]] = {}
    for a, b, winner in winners:
        key = tuple(sorted((a, b), key=lambda n: (rank.get(n, len(rank)), n)))
        tally = out.setdefault(key, {key[0]: 0, key[1]: 0, "tie": 0})
        tally[winner if winner in tally else "tie"] += 1
    return out


def _fit(models: list[str], battles: list[tuple[int, int, float]], prior: float) -> np.ndarray:
    """Bradley-Terry log-strengths (mean zero) by maximum likelihood; `battles`: (i, j, score of i)
    with a tie as 0.5. `prior` > 0 adds a Gaussian prior of that standard deviation on each strength,
    which keeps a model that never lost finite."""
    from scipy.optimize import minimize

    i = np.array([b[0] for b in battles])
    j = np.array([b[1] for b in battles])
    s = np.array([b[2] for b in battles], dtype=float)
    k = len(models)

    def nll(beta):
        d = beta[i] - beta[j]
        p = 1 / (1 + np.exp(-d))
        loss = -(s * np.log(p + 1e-300) + (1 - s) * np.log(1 - p + 1e-300)).sum()
        grad = np.zeros(k)
        np.add.at(grad, i, -(s - p))
        np.add.at(grad, j, s - p)
        if prior:
            loss += (beta**2).sum() / (2 * prior**2)
            grad += beta / prior**2
        return loss, grad

    beta = minimize(nll, np.zeros(k), jac=True, method="L-BFGS-B").x
    return beta - beta.mean()


@dataclass(frozen=True)
class Rank:
    checkpoint: str
    rating: float  # Elo scale: 1000 is the field's mean; 400 points is 10:1 odds
    low: float
    high: float
    battles: int


def bradley_terry(
    verdicts: list[tuple[str, str, str, str]], seed: int = 0, resamples: int = 1000, prior: float = 2.0
) -> list[Rank]:
    """A leaderboard from pairwise verdicts `(conversation, checkpoint a, checkpoint b, verdict)`
    (verdict: "a", "b", "tie" or a judge's "inconsistent", counted as a tie), as Chatbot Arena ranks its
    models: Bradley-Terry strengths on the Elo scale, with 95% percentile intervals from refitting on
    resampled *conversations* (a conversation's verdicts stay together). Best first."""
    models = sorted({m for _, a, b, _ in verdicts for m in (a, b)})
    if len(models) < 2:
        return []
    index = {m: n for n, m in enumerate(models)}
    score = {"a": 1.0, "b": 0.0, "tie": 0.5, "inconsistent": 0.5}
    by_conversation: dict[str, list[tuple[int, int, float]]] = {}
    for conv, a, b, v in verdicts:
        by_conversation.setdefault(conv, []).append((index[a], index[b], score[v]))
    groups = list(by_conversation.values())
    flat = [b for g in groups for b in g]
    point = _fit(models, flat, prior)
    low = high = point
    if len(groups) >= 2:
        from scipy.stats import bootstrap

        res = bootstrap(
            (np.arange(len(groups)),),
            lambda g: _fit(models, [b for n in g for b in groups[n]], prior),
            vectorized=False,
            n_resamples=resamples,
            confidence_level=CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)
    played = {m: sum(1 for b in flat if index[m] in b[:2]) for m in models}
    out = [
        Rank(
            m, ELO_BASE + ELO_SCALE * point[n], ELO_BASE + ELO_SCALE * low[n], ELO_BASE + ELO_SCALE * high[n], played[m]
        )
        for n, m in enumerate(models)
    ]
    return sorted(out, key=lambda r: -r.rating)
