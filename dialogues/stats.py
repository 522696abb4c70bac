"""The statistics of a study, with no store and no app: plain lists in, numbers out.

A conversation is the list of its assistant turns' labels, in order. Turns of one conversation are
not independent (a model that loses the thread fails every turn after), so every interval here is a
percentile bootstrap that resamples *conversations* (clusters), never turns. The bootstrap is
scipy's; the Bradley-Terry fit is scipy's L-BFGS on the model's log-likelihood. Every draw is seeded.

Resampling is thousands of small array operations, and the app computes them beside vLLM on the same
cores. With a BLAS thread per core each operation waits for a thread the busy server has pushed off its
core: a Bradley-Terry board with its intervals took 25 s beside two busy cores, against about 1.5 s with
one BLAS thread (1.4 s on an idle machine). So the resampling runs with one BLAS thread (threadpoolctl).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

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


def _one_blas_thread(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import scipy.stats  # noqa: F401  (loaded first: a library loaded inside the limit would escape it)

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


@_one_blas_thread
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


def difference_of_differences(
    first_own: list[list[str]],
    second_own: list[list[str]],
    first_shared: list[list[str]],
    second_shared: list[list[str]],
    label: str = "excellent",
    seed: int = 0,
) -> Estimate:
    """How much larger the gap `second` − `first` in `label` share is under one condition (own history)
    than under the other (shared history), with the four groups' conversations each resampled on their own."""
    groups = [[c for c in g if c] for g in (first_own, second_own, first_shared, second_shared)]
    counts = [_counts(g, label) for g in groups]
    if not all(n.sum() for _, n in counts):
        return Estimate(math.nan, math.nan, math.nan)

    def stat(i, j, k, m, axis=-1):
        (h1, n1), (h2, n2), (h3, n3), (h4, n4) = counts
        own = h2[j].sum(axis=axis) / n2[j].sum(axis=axis) - h1[i].sum(axis=axis) / n1[i].sum(axis=axis)
        shared = h4[m].sum(axis=axis) / n4[m].sum(axis=axis) - h3[k].sum(axis=axis) / n3[k].sum(axis=axis)
        return own - shared

    index = tuple(np.arange(len(g)) for g in groups)
    return Estimate(float(stat(*index)), *_bootstrap(index, stat, seed))


def mean(groups: list[list[float]], seed: int = 0) -> Estimate:
    """The mean of every value, with its 95% interval over the groups (a benchmark's questions: a
    question's two turns are not independent), resampled."""
    groups = [g for g in groups if g]
    if not groups:
        return Estimate(math.nan, math.nan, math.nan)
    sums = np.array([sum(g) for g in groups], dtype=float)
    counts = np.array([len(g) for g in groups], dtype=float)

    def stat(i, axis=-1):
        return sums[i].sum(axis=axis) / counts[i].sum(axis=axis)

    index = np.arange(len(groups))
    return Estimate(float(stat(index)), *_bootstrap((index,), stat, seed))


def paired_mean(values: list[float], seed: int = 0) -> Estimate:
    """The mean of one value per item (a paired gap per question, a win counted 1, a tie 0.5), with its
    95% interval over the items, resampled."""
    return mean([[v] for v in values], seed)


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


@_one_blas_thread
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


def cluster_interval(groups: int, statistic, seed: int = 0, resamples: int = 1000) -> tuple[float, float]:
    """A 95% percentile interval of `statistic(indices)` over resamples of `groups` clusters (conversations)
    with replacement. A resample where the statistic is undefined (nan: say, every label the same, for
    Krippendorff's alpha) is left out, as scipy cannot; fewer than 2 clusters: no interval (nan)."""
    if groups < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, groups, groups)) for _ in range(resamples)], dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = 100 * (1 - CONFIDENCE) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


@dataclass(frozen=True)
class Needed:
    """How many conversations per checkpoint a study needs for the 95% interval of the gap in a label's
    share to exclude 0 with the power asked for, from a bootstrap of the pilot."""

    first: str
    second: str
    gap: float  # the pilot's: second's share minus first's
    have: int  # conversations of the smaller side so far
    per_checkpoint: int | None  # None: no gap in the pilot, too few conversations, or more than `cap`
    power: float
    why: str = ""  # when per_checkpoint is None

    @property
    def more(self) -> int | None:
        return None if self.per_checkpoint is None else max(self.per_checkpoint - self.have, 0)

    def line(self) -> str:
        head = f"{self.second} vs {self.first}"
        if self.per_checkpoint is None:
            return f"{head}: {self.why}"
        gap = f"{100 * self.gap:+.1f} points"
        if not self.more:
            return (
                f"{head}: the pilot's gap ({gap}) needs about {self.per_checkpoint} conversations per checkpoint "
                f"at {100 * self.power:.0f}% power; the {self.have} done are enough"
            )
        return (
            f"{head}: about {self.more} more conversations per checkpoint ({self.per_checkpoint} in all) for the "
            f"95% interval of the pilot's gap ({gap}) to exclude 0 at {100 * self.power:.0f}% power"
        )


def _gap_clears_zero(h1, n1, h2, n2) -> np.ndarray:
    """Per simulated study (rows: conversations drawn), whether the gap's 95% interval excludes 0: the
    ratio estimator's cluster (conversation-level) standard error by the delta method, as the bootstrap
    over conversations estimates it at that size without the inner resampling; Student's t with the
    conversations' degrees of freedom, so a handful of conversations is not trusted like a hundred."""
    from scipy.stats import t as student

    z = student.ppf(1 - (1 - CONFIDENCE) / 2, 2 * (h1.shape[1] - 1))

    def ratio_and_var(h, n):
        r = h.sum(axis=1) / n.sum(axis=1)
        k = h.shape[1]
        resid = h - r[:, None] * n
        var = resid.var(axis=1, ddof=1) * k / n.sum(axis=1) ** 2
        return r, var

    r1, v1 = ratio_and_var(h1, n1)
    r2, v2 = ratio_and_var(h2, n2)
    gap, se = r2 - r1, np.sqrt(v1 + v2)
    return np.where(se > 0, np.abs(gap) > z * se, gap != 0) & (np.sign(gap) == np.sign(gap.mean()))


def conversations_needed(
    first: list[list[str]],
    second: list[list[str]],
    label: str = "excellent",
    *,
    names: tuple[str, str] = ("first", "second"),
    power: float = 0.8,
    seed: int = 0,
    resamples: int = 500,
    cap: int = 1000,
) -> Needed:
    """Conversations per checkpoint for the interval of the gap in `label`'s share to exclude 0 with
    `power`: for each size, `resamples` studies of that many conversations drawn (with replacement) from
    each side's pilot; the smallest size where that share of them clear 0 (found by bisection, with the
    same draws at every size). The pilot stands in for the truth: a pilot with no gap gets no estimate."""
    first, second = [c for c in first if c], [c for c in second if c]
    have = min(len(first), len(second))
    if have < 2:
        return Needed(*names, math.nan, have, None, power, "too few conversations to estimate (2 per side at least)")
    (h1, n1), (h2, n2) = _counts(first, label), _counts(second, label)
    gap = h2.sum() / n2.sum() - h1.sum() / n1.sum()
    if gap == 0:
        return Needed(*names, 0.0, have, None, power, f"the pilot shows no gap in the {label} share: no size would")
    rng = np.random.default_rng(seed)
    u1, u2 = rng.random((resamples, cap)), rng.random((resamples, cap))  # the same draws at every size

    def powered(k: int) -> bool:
        i = (u1[:, :k] * len(first)).astype(int)
        j = (u2[:, :k] * len(second)).astype(int)
        return _gap_clears_zero(h1[i], n1[i], h2[j], n2[j]).mean() >= power

    if not powered(cap):
        return Needed(
            *names, float(gap), have, None, power, f"more than {cap} conversations per checkpoint: the gap is too small"
        )
    low, high = 2, cap  # powered(high) holds
    while low < high:
        mid = (low + high) // 2
        if powered(mid):
            high = mid
        else:
            low = mid + 1
    return Needed(*names, float(gap), have, high, power)
