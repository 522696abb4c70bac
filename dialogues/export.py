"""Rated chains out of the store as training data (LIMA or messages JSONL), with filters.

A chain is one root-to-leaf branch of a session's turn tree (in compare sessions, each side is its
own branch). A turn's label is the lowest current label among the annotators considered, so a
turn one annotator failed never passes as excellent. Assistant turns that errored, were stopped
or are still streaming end a chain before their question. Identical chains are written once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from limachat.dialogues.formats import dumps
from limachat.dialogues.store import LABELS, MODES, RANK, Store
from limachat.dialogues.values import GOLD_SOURCES, RATERS

UNRATED = "unrated"


def _filter(default, help: str, choices: tuple | None = None, bounds: tuple | None = None, date: bool = False):
    """A filter field: its default, its help line, and the values it takes (the CLI flags, the
    Collect tab and validation all read these)."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds, "date": date})


@dataclass(frozen=True)
class Filters:
    """Which chains leave the store: the one definition behind `limachat export`, `train --from-db`,
    the curation commands and the app's Collect tab (flags from `options.filter_options`, CLI arguments
    back from `args`)."""

    min_label: str | None = _filter(None, "Every assistant turn rated at least this.", LABELS)
    cut_at_first_fail: bool = _filter(False, "Keep each chain up to the exchange before its first fail.")
    prefer_gold: bool = _filter(
        False, "Use gold edits in place of the replies they correct."
    )  # an edited turn counts as excellent
    checkpoint: str | None = _filter(None, "Only chains answered by this checkpoint.")
    annotator: str | None = _filter(None, "Only this annotator's ratings count.")
    mode: str | None = _filter(None, "Only sessions of this mode.", MODES)
    since: str | None = _filter(None, "Sessions created at or after this ISO date/time.", date=True)
    until: str | None = _filter(None, "Sessions created before this ISO date/time.", date=True)
    study: str | None = _filter(None, "Only the sessions of this study (`limachat study`).")
    min_turns: int = _filter(1, "Assistant turns per chain.", bounds=(1, None))
    raters: str = _filter(
        "humans",
        "Whose ratings count: people's, LLM judges' (`limachat judge`), both, or people's with an adjudicator's "
        "final label winning (adjudicated).",
        RATERS,
    )
    human_wins: bool = _filter(False, "Where a person rated a turn, only people's labels count (with --raters all).")
    min_score: float | None = _filter(
        None,
        "Every assistant turn scored at least this by `limachat judge score` (AlpaGasus kept 4.5 and up).",
        bounds=(0, 5),
    )
    selection: str | None = _filter(None, "Only the chains of this named selection (`limachat select`).")
    gold_from: str = _filter(
        "humans",
        "With --prefer-gold: people's edits, teachers' revisions (`limachat revise`), or both, a person's winning.",
        GOLD_SOURCES,
    )

    def __post_init__(self):
        for f in fields(self):
            value, choices, bounds = getattr(self, f.name), f.metadata["choices"], f.metadata["bounds"]
            flag = "--" + f.name.replace("_", "-")
            if value is not None and choices and value not in choices:
                raise ValueError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
            if value is not None and f.metadata["date"]:
                try:
                    datetime.fromisoformat(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{flag} must be an ISO date or date/time (2026-12-01, 2026-12-01T09:30), not {value!r}"
                    ) from None
            low, high = bounds or (None, None)
            if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
                raise ValueError(f"{flag} must be from {low} to {high if high is not None else 'up'}, not {value}")

    def args(self) -> list[str]:
        """The command-line flags that give these filters (for a background `limachat` run)."""
        out = []
        for f in fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if value == f.default:
                continue
            out += [flag] if value is True else [flag, str(value)]
        return out


@dataclass
class Chain:
    session: dict[str, Any]
    turns: list[dict[str, Any]]  # user, assistant, user, assistant ...
    labels: list[str]  # one per assistant turn: fail | pass | excellent | unrated
    annotators: list[str]
    leaf: str = ""  # the id of the branch's last turn: the chain's name in a selection
    reasons: list[str] = field(default_factory=list)  # one per assistant turn: "ana: too long" ("" for none)
    edited_by: list[str | None] = field(default_factory=list)  # per assistant turn: the gold edit's author

    def messages(self) -> list[dict[str, Any]]:
        """The chain as chat messages; an imported OpenAI file's per-message "weight" is written back."""
        meta = self.session.get("meta") or {}
        head = [{"role": "system", "content": meta["system"]}] if meta.get("system") else []
        weights = meta.get("weights") or []
        out = []
        for i, t in enumerate(self.turns):
            message = {"role": t["role"], "content": t["content"]}
            if i < len(weights) and weights[i] is not None:
                message["weight"] = weights[i]
            out.append(message)
        return head + out

    def provenance(self) -> dict[str, Any]:
        """Where the chain came from (trainers ignore it); a study's chain says which study and slot."""
        out = {
            "session": self.session["id"],
            "mode": self.session["mode"],
            "checkpoints": sorted({t["checkpoint"] or "imported" for t in self.turns if t["role"] == "assistant"}),
            "labels": self.labels,
            "annotators": self.annotators,
            "turn_ids": [t["id"] for t in self.turns],
        }
        if any(self.reasons):
            out["reasons"] = self.reasons
        if any(self.edited_by):
            out["edited_by"] = self.edited_by
        if self.session.get("study"):
            out.update(study=self.session["study"], slot=self.session["slot"])
        return out


def reasons_of(store: Store, keep, annotator: str | None = None) -> dict[str, str]:
    """turn id -> the reasons its raters gave with their labels ("ana: too long; bo: wrong year")."""
    out: dict[str, list[str]] = defaultdict(list)
    for turn, _, who, _, reason in store.reasons():
        if keep(who) and (annotator is None or who == annotator):
            out[turn].append(f"{who}: {reason}")
    return {t: "; ".join(r) for t, r in out.items()}


def chains(store: Store, f: Filters = Filters()) -> Iterator[Chain]:
    sessions = store.sessions_where(f.mode, f.since, f.until, f.study)
    ratings = store.current_ratings(f.annotator)
    label = store.lowest_labels(f.annotator, ratings, raters=f.raters, human_wins=f.human_wins)
    keep = store.takes(f.raters)
    who: dict[str, set[str]] = defaultdict(set)
    for turn, annotator, _ in ratings:
        if keep(annotator):
            who[turn].add(annotator)
    why = reasons_of(store, keep, f.annotator)
    gold = store.gold_editors(source=f.gold_from) if f.prefer_gold else {}
    scores = store.current_scores() if f.min_score is not None else {}
    chosen = set(store.selection(f.selection)) if f.selection else None
    children: dict[str | None, list[dict]] = defaultdict(list)
    for t in store.chain_turns():
        if t["session_id"] in sessions:
            children[t["parent_id"]].append(t)
    seen: set[str] = set()
    for root in children[None]:
        stack = [(root, [root])]
        while stack:  # depth-first walk; every leaf closes one branch
            node, path = stack.pop()
            kids = children.get(node["id"])
            if kids:
                stack.extend((k, path + [k]) for k in reversed(kids))
                continue
            if chosen is not None and node["id"] not in chosen:
                continue
            chain = _select(sessions[node["session_id"]], path, label, who, gold, scores, f)
            if chain is None:
                continue
            chain.reasons = [why.get(t["id"], "") for t in chain.turns[1::2]]
            key = dumps(chain.messages())
            if key not in seen:
                seen.add(key)
                yield chain


def _select(session, path, label, who, gold, scores, f: Filters) -> Chain | None:
    kept: list[dict] = []
    labels: list[str] = []
    edited_by: list[str | None] = []  # per reply kept: who wrote the gold edit it was swapped for
    for i in range(0, len(path) - 1, 2):
        user, reply = path[i], path[i + 1]
        if reply["status"] != "ok" or not reply["content"]:
            break
        lab = label.get(reply["id"], UNRATED)
        edited_by.append(None)
        if f.prefer_gold and reply["id"] in gold:
            (text, edited_by[-1]), lab = gold[reply["id"]], "excellent"
            reply = {**reply, "content": text}
        if f.cut_at_first_fail and lab == "fail":
            break
        kept += [user, reply]
        labels.append(lab)
    if not labels or len(labels) < f.min_turns:
        return None
    if f.min_label and any(lab == UNRATED or RANK[lab] < RANK[f.min_label] for lab in labels):
        return None
    if f.checkpoint and any(t["checkpoint"] != f.checkpoint for t in kept[1::2]):
        return None
    if f.min_score is not None and any(scores.get(t["id"], -1) < f.min_score for t in kept[1::2]):
        return None
    annotators = sorted(set().union(*(who.get(t["id"], set()) for t in kept[1::2])))
    if f.annotator and not annotators:
        return None
    return Chain(session, kept, labels, annotators, path[-1]["id"], edited_by=edited_by[: len(labels)])


def training_record(chain: Chain, fmt: str) -> dict[str, Any]:
    """One line of training data. Provenance rides in "limachat", a field trainers ignore."""
    if fmt == "lima":
        source = "multi_turn" if len(chain.labels) > 1 else (chain.session.get("meta") or {}).get("source", "limachat")
        return {"conversations": [t["content"] for t in chain.turns], "source": source, "limachat": chain.provenance()}
    if fmt == "messages":
        return {"messages": chain.messages(), "limachat": chain.provenance()}
    raise ValueError(f"--format must be lima, messages or sessions, not {fmt!r}")


def export(store: Store, path: Path, fmt: str, f: Filters = Filters()) -> tuple[int, int]:
    """Write the file (atomically); return (chains, assistant turns) written."""
    from limachat.dialogues.formats import session_records

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    n_chains = n_turns = 0
    with tmp.open("w", encoding="utf-8") as out:
        if fmt == "sessions":
            for record in session_records(store):
                out.write(dumps(record) + "\n")
                n_chains += 1
                n_turns += sum(t["role"] == "assistant" for t in record["turns"])
        else:
            for chain in chains(store, f):
                out.write(dumps(training_record(chain, fmt)) + "\n")
                n_chains += 1
                n_turns += len(chain.labels)
    tmp.replace(path)
    return n_chains, n_turns
