"""`limachat ablate`: which data bought which gain. From a training export (its chains keep their
provenance: who rated them, of what kind, which gold edits), train one checkpoint per left-out group plus
one with everything, on the same recipe and seed; load them all into the running server; replay the
scripted conversations on each; have the configured judge label every reply; and report, per group, what
leaving it out did to the excellent share, the fail share and the held-out loss, each with its interval
over conversations. LIMA's own ablations (section 5: quantity, quality, diversity) are designs of the
same loop. Resumable: trained variants, replayed conversations and judged replies are kept and skipped.
The one module, with rounds.py, that joins curate, train and serve."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from limachat.dialogues import stats
from limachat.dialogues.formats import FormatError, chain_pairs, jsonl_records
from limachat.jobs import Progress
from limachat.layout import BASE_NAME, DIALOGUE

GROUPINGS = ("annotator", "kind", "source", "selection")
DESIGNS = ("leave-one-out", "quantity", "quality", "diversity")
ALL = "all"
KINDS = ("judge", "teacher", "adjudicator")  # name prefixes of machine and reviewer annotators (judge/...)
# LIMA section 5 (Zhou et al., 2023), the direction each ablation went on their 7B model.
PAPER = {
    "quantity": "LIMA: 2,000 to 32,000 examples of one source, each step doubling it, gave no better generations",
    "quality": "LIMA: the filtered data beat the unfiltered at the same size, by about half a point of 6",
    "diversity": "LIMA: the more diverse source beat the more homogeneous one at the same size",
}


@dataclass
class Chain:
    messages: tuple[tuple[str, str], ...]
    groups: frozenset[str]
    where: str  # FILE:LINE
    label: str | None = None  # its lowest label, where the export gives labels


def _kind(name: str, kinds: dict[str, str]) -> str:
    return kinds.get(name) or next((k for k in KINDS if name.startswith(k + "/")), "human")


def _groups(prov: dict[str, Any], by: str, kinds: dict[str, str], selections: dict[str, set[str]]) -> set[str]:
    names = [a["name"] if isinstance(a, dict) else str(a) for a in prov.get("annotators") or []]
    if by == "annotator":
        return set(names) or {"(unrated)"}
    if by == "kind":
        return {_kind(n, kinds) for n in names} or {"(unrated)"}
    if by == "source":
        if "source" in prov:  # a file of its own categories (LIMA's format: "source"), not a limachat export
            return {prov["source"]}
        out = set()
        editors = [e for e in prov.get("edited_by") or [] if e]
        out |= {"teacher revisions" if _kind(e, kinds) == "teacher" else "gold edits" for e in editors}
        if any(_kind(n, kinds) == "judge" for n in names):
            out.add("judge-labelled chains")
        if any(_kind(n, kinds) != "judge" for n in names):
            out.add("people-labelled chains")
        return out or {"unrated chains"}
    leaf = (prov.get("turn_ids") or [None])[-1]
    return {name for name, leaves in selections.items() if leaf in leaves} or {"(no selection)"}


def read_export(path: Path, by: str, store=None) -> list[Chain]:
    """The chains of an export (`limachat export`, any training format), each with its groups under `by`."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    kinds = store.annotator_kinds() if store is not None else {}
    selections = (
        {s["name"]: set(store.selection(s["name"])) for s in store.selections()} if store and by == "selection" else {}
    )
    out = []
    for number, record, problem in jsonl_records(Path(path)):
        where = f"{path}:{number}"
        if problem:
            raise FormatError(f"{where}: {problem}")
        pairs = chain_pairs(record, where, "not a training chain (export with --format messages or lima)")
        prov = record.get("limachat") or ({"source": record["source"]} if isinstance(record.get("source"), str) else {})
        labels = [x for x in prov.get("labels") or [] if x in stats.LABELS]
        lowest = min(labels, key=stats.LABELS.index) if labels else None
        out.append(Chain(tuple(pairs), frozenset(_groups(prov, by, kinds, selections)), where, lowest))
    if not out:
        raise FormatError(f"{path}: no chains")
    return out


@dataclass(frozen=True)
class Variant:
    name: str  # "all", "without-<group>", or a design's ("1x", "filtered" ...)
    chains: tuple[int, ...]  # indices into the export's chains
    group: str | None = None  # the group left out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "x"


def variants(chains: list[Chain], design: str = "leave-one-out", seed: int = 0) -> list[Variant]:
    """The training sets to compare. leave-one-out: everything, and everything but each group. quantity: one
    source at 1x, 2x and 4x (1x a quarter of it). quality: the chains labelled pass or better against as many
    drawn from all. diversity: the largest group alone against as many drawn from every group."""
    rng = random.Random(seed)
    every = tuple(range(len(chains)))
    if design == "leave-one-out":
        groups = sorted(set().union(*(c.groups for c in chains)))
        if len(groups) < 2:
            raise ValueError(f"leave-one-out needs two groups or more; this export has {len(groups)}: {groups}")
        return [Variant(ALL, every)] + [
            Variant(f"without-{slug(g)}", tuple(i for i in every if g not in chains[i].groups), g) for g in groups
        ]
    if design == "quantity":
        order = rng.sample(every, len(every))
        quarter = len(every) // 4
        if quarter < 1:
            raise ValueError("quantity needs 4 chains or more")
        return [Variant(f"{k}x", tuple(sorted(order[: quarter * k]))) for k in (1, 2, 4)]
    if design == "quality":
        good = tuple(i for i in every if chains[i].label in ("pass", "excellent"))
        if not good or len(good) == len(every):
            raise ValueError("quality needs labelled chains both above and below pass (export with --raters)")
        return [Variant("filtered", good), Variant("unfiltered", tuple(sorted(rng.sample(every, len(good)))))]
    if design == "diversity":
        by: dict[str, list[int]] = defaultdict(list)
        for i in every:
            by[min(chains[i].groups)].append(i)
        if len(by) < 2:
            raise ValueError("diversity needs two groups or more")
        one = max(sorted(by), key=lambda g: len(by[g]))
        size = len(by[one])
        pool = [i for g in sorted(by) for i in by[g]]
        return [
            Variant(f"one-{slug(one)}", tuple(by[one]), one),
            Variant("mixed", tuple(sorted(rng.sample(pool, size)))),
        ]
    raise ValueError(f"--design must be one of {', '.join(DESIGNS)}, not {design!r}")


# -- the report ---------------------------------------------------------------------------------------------
@dataclass
class Measured:
    variant: str
    group: str | None
    chains: int
    conversations: list[list[str]] = field(default_factory=list)  # the judge's labels, per replayed conversation
    losses: list[tuple[float, int]] = field(default_factory=list)  # held-out (NLL sum, tokens) per chain

    def loss(self) -> float:
        return sum(x for x, _ in self.losses) / max(sum(n for _, n in self.losses), 1)


@dataclass
class Effect:
    """What leaving a group out did (`all` minus `without`): positive means the group helped."""

    name: str
    excellent: stats.Estimate
    fail: stats.Estimate  # all's fail share minus without's: negative means the group kept replies from failing
    loss: stats.Estimate  # without's held-out loss minus all's: positive means the group lowered it

    def unclear(self) -> list[str]:
        """The effects no interval can tell from zero."""
        return [k for k, e in (("excellent", self.excellent), ("fail", self.fail), ("loss", self.loss)) if _zero(e)]


def _zero(e: stats.Estimate) -> bool:
    return e.value != e.value or e.low <= 0 <= e.high


def loss_difference(first: list[tuple[float, int]], second: list[tuple[float, int]], seed: int = 0) -> stats.Estimate:
    """`first`'s held-out loss minus `second`'s, on the same chains: a paired percentile bootstrap over chains."""
    a, b = np.array(first, dtype=float), np.array(second, dtype=float)
    if not len(a) or len(a) != len(b) or not a[:, 1].sum():
        return stats.Estimate(math.nan, math.nan, math.nan)

    def stat(i, axis=-1):
        return a[i, 0].sum(axis=axis) / a[i, 1].sum(axis=axis) - b[i, 0].sum(axis=axis) / b[i, 1].sum(axis=axis)

    index = np.arange(len(a))
    return stats.Estimate(float(stat(index)), *stats._bootstrap((index,), stat, seed))


def effects(measured: list[Measured], seed: int = 0) -> list[Effect]:
    """Leave-one-out: each group's effect, all minus without. A design: each variant against the first."""
    by = {m.variant: m for m in measured}
    ref = by.get(ALL) or measured[0]
    out = []
    for m in measured:
        if m is ref:
            continue
        if ref.variant == ALL:  # the group's worth: everything against everything but it
            first, second = m, ref
        else:  # a design: this variant against the first (1x, filtered, one source)
            first, second = ref, m
        out.append(
            Effect(
                m.group if ref.variant == ALL else f"{m.variant} vs {ref.variant}",
                stats.difference(first.conversations, second.conversations, "excellent", seed),
                stats.difference(first.conversations, second.conversations, "fail", seed),
                loss_difference(first.losses, second.losses, seed),
            )
        )
    return out


def _pts(e: stats.Estimate) -> str:
    return "n/a" if e.value != e.value else f"{100 * e.value:+.1f} [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"


def _nll(e: stats.Estimate) -> str:
    return "n/a" if e.value != e.value else f"{e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"


def markdown(
    name: str, design: str, by: str, measured: list[Measured], found: list[Effect], judge: str, steps: int
) -> str:
    lines = [f"# Ablation {name}", ""]
    lines += [
        f"Design: {design}" + (f", groups by {by}" if design == "leave-one-out" else "") + f"; judge: {judge}.",
        "",
        "| variant | chains | replayed conversations | judged replies | fail | excellent | held-out loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in measured:
        shares = stats.shares(m.conversations)
        lines.append(
            f"| {m.variant} | {m.chains} | {len(m.conversations)} | {sum(map(len, m.conversations))} | "
            f"{_pct(shares['fail'])} | {_pct(shares['excellent'])} | {m.loss():.3f} |"
        )
    if design == "leave-one-out":
        head = "| group left out | excellent share (points) | fail share (points) | held-out loss |"
        note = (
            "Each effect is `all` minus `without` the group (the loss: without minus all), so a positive excellent "
            "or loss effect and a negative fail effect mean the group helped. Intervals: 95%, from 2,000 bootstrap "
            "resamples of the replayed conversations (the loss: of the held-out chains, paired)."
        )
    else:
        head = "| comparison | excellent share (points) | fail share (points) | held-out loss |"
        note = "Each effect is the named variant minus the first; the held-out loss the first's minus the variant's."
    lines += ["", head, "|---|---|---|---|"]
    for e in sorted(found, key=lambda e: -e.loss.value if e.loss.value == e.loss.value else 0):
        cells = [
            (_pts(e.excellent), "excellent"),
            (_pts(e.fail), "fail"),
            (_nll(e.loss), "loss"),
        ]
        unclear = set(e.unclear())
        lines.append(f"| {e.name} | " + " | ".join(c + (" ·" if k in unclear else "") for c, k in cells) + " |")
    lines += [
        "",
        note,
        f"Every variant trained for the same {steps} optimizer steps (the largest variant's epochs), so a group's "
        "worth is not the worth of more steps.",
        "A dot (·) marks an effect whose interval includes 0: this run cannot tell it from no effect.",
    ]
    if design in PAPER:
        clear = [e for e in found if not _zero(e.loss) or not _zero(e.excellent)]
        lines += ["", f"{PAPER[design]}. Here: " + _said(found) + (
            "" if clear else " No interval excludes 0: on this model and this much data the ablation cannot show "
            "a direction either way."
        )]  # fmt: skip
    return "\n".join(lines) + "\n"


def _said(found: list[Effect]) -> str:
    return (
        "; ".join(f"{e.name}: excellent {_pts(e.excellent)} points, held-out loss {_nll(e.loss)}" for e in found) + "."
    )


def _pct(e: stats.Estimate) -> str:
    return "n/a" if e.value != e.value else f"{100 * e.value:.1f}%"


# -- the run --------------------------------------------------------------------------------------------------
def _examples(chains: list[Chain], indices: tuple[int, ...]):
    from limachat.train.data import Example

    return [Example(chains[i].messages, len(chains[i].messages) > 2, chains[i].where) for i in indices]


def _conversations(store, name: str, variant: str, users: dict[str, int]) -> dict[str, str]:
    """conversation id -> the newest session of this variant that reached every scripted turn."""
    out = {}
    for s in store.tagged_sessions("ablation", name):
        meta = s["meta"] or {}
        conv = meta.get("conversation")
        if meta.get("variant") != variant or conv not in users:
            continue
        ok = [t for t in store.turns(s["id"]) if t["role"] == "assistant" and t["status"] == "ok"]
        if len(ok) == users[conv]:
            out[conv] = s["id"]
    return out


def _labels(store, sessions: list[str], judge: str) -> list[list[str]]:
    """The judge's labels of each session's replies, in order."""
    out = []
    for sid in sessions:
        turns = [t["id"] for t in store.turns(sid) if t["role"] == "assistant" and t["status"] == "ok"]
        got = store.judge_labels(turns)
        out.append([got[t][0] for t in turns if t in got and got[t][1] == judge])
    return out


def run(
    store,
    settings,
    export: Path,
    *,
    name: str,
    by: str = "annotator",
    design: str = "leave-one-out",
    prompts: str | Path | None = "scripted",
    conversations: int | None = None,
    heldout: Path | None = None,
    epochs: int | None = 1,
    seed: int = 0,
    progress=print,
) -> str:
    """The whole ablation; returns its report (Markdown), also written to <home>/reports/ablate-NAME.md
    with the figures as JSON beside it. Every variant trains with the recipe's settings and seed."""
    from limachat.curate import judge
    from limachat.curate.common import bounded, reachable
    from limachat.dialogues.export import Filters
    from limachat.dialogues.study import prompt_set
    from limachat.replies import converse
    from limachat.serve.base import prepare_base
    from limachat.serve.client import ChatClient
    from limachat.serve.server import load_adapter
    from limachat.train.data import heldout_examples, read_file, split
    from limachat.train.pipeline import run as train
    from limachat.train.recipe import make_config
    from limachat.train.trainer import adapter_losses

    if design not in DESIGNS:
        raise ValueError(f"--design must be one of {', '.join(DESIGNS)}, not {design!r}")
    chains = read_export(export, by, store)
    plan = variants(chains, design, seed)
    set_name, scripted = prompt_set(prompts)
    scripted = scripted[:conversations] if conversations else scripted
    users = {p["id"]: [p["prompt"], *p.get("turns", [])] for p in scripted}
    held = read_file(heldout) if heldout else heldout_examples()
    endpoint = settings.endpoint(settings.curate.judge)
    if ChatClient(settings.local(BASE_NAME), timeout=10).status() != "ready":  # before any training: it is needed
        raise ValueError(
            f"no model server answers at {settings.local_base_url}: start `limachat serve` (ablate loads every "
            "variant it trains there)"
        )
    reachable(endpoint, "judge")
    base = prepare_base(settings.home, settings.server.base, progress).model
    preset, params = settings.sampling_for(None)
    who = ""
    # The same number of optimizer steps for every variant (the largest one's, in `epochs` epochs): with a fixed
    # number of epochs a smaller variant also trains for fewer steps, and every group would seem to help.
    batch = make_config(variant=DIALOGUE, epochs=epochs).batch_size
    budget = max(math.ceil(len(v.chains) / batch) for v in plan) * (epochs or make_config().epochs)
    overrides = {"epochs": epochs, "max_steps": budget}
    measured = []
    with Progress(f"ablation {name}", total=len(plan), unit="variant") as bar:
        for v in plan:
            checkpoint = f"{name}-{v.name}"
            bar.message(f"{checkpoint}: training on {len(v.chains)} chains")
            data = split(_examples(chains, v.chains))
            train(settings, [DIALOGUE], data, base, overrides, name=checkpoint, progress=progress)
            out_dir = settings.layout.checkpoint(checkpoint)
            losses = adapter_losses(base, out_dir, held)
            load_adapter(settings.local_base_url, checkpoint, out_dir, settings.layout.api_key())
            client = ChatClient(settings.local(checkpoint), timeout=600)
            done = _conversations(store, name, v.name, {k: len(u) for k, u in users.items()})
            todo = [k for k in users if k not in done]
            bar.message(f"{checkpoint}: replaying {len(todo)} scripted conversations ({len(done)} done before)")

            async def one(conv, checkpoint=checkpoint, client=client, v=v):
                meta = {"ablation": name, "variant": v.name, "conversation": conv}
                return await converse(
                    store.aio, client, checkpoint, users[conv], meta=meta, prompt_set=set_name, prompt=conv,
                    preset=preset, params=params, context_window=settings.server.max_model_len,
                )  # fmt: skip

            with Progress(f"replaying to {checkpoint}", total=len(todo), unit="conversation") as replayed:
                asyncio.run(bounded(todo, one, 4, replayed))
            judged = judge.run(
                store,
                endpoint,
                "label",
                Filters(checkpoint=checkpoint),
                concurrency=settings.curate.concurrency,
                max_tokens=settings.curate.judge_max_tokens,
            )
            bar.message(f"{checkpoint}: {judged.line()}")
            who = judged.judge
            sessions = _conversations(store, name, v.name, {k: len(u) for k, u in users.items()})
            labels = _labels(store, [sessions[k] for k in users if k in sessions], who)
            measured.append(Measured(v.name, v.group, len(v.chains), [c for c in labels if c], losses))
            bar.update(1)
    found = effects(measured, seed)
    report = markdown(name, design, by, measured, found, who, budget)
    out = settings.layout.reports
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ablate-{name}.md").write_text(report)
    figures = {
        "name": name, "design": design, "by": by, "export": str(export), "judge": who, "steps": budget,
        "variants": [{**asdict(m), "loss": m.loss()} for m in measured],
        "effects": [{"name": e.name, **{k: asdict(getattr(e, k)) for k in ("excellent", "fail", "loss")}} for e in found],
    }  # fmt: skip
    (out / f"ablate-{name}.json").write_text(json.dumps(figures, indent=1) + "\n")
    return report
