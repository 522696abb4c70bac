"""Rated chains out of the store as training data (LIMA or messages JSONL), with filters.

A chain is one root-to-leaf branch of a session's turn tree (in compare sessions, each side is its
own branch). A turn's label is the lowest current label among the annotators considered, so a
turn one annotator failed never passes as excellent. Assistant turns that errored, were stopped
or are still streaming end a chain before their question. Identical chains are written once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limachat.dialogues.formats import dumps
from limachat.dialogues.store import LABELS, MODES, RANK, Store
from limachat.dialogues.values import GOLD_SOURCES, RATERS

UNRATED = "unrated"


@dataclass(frozen=True)
class Filters:
    min_label: str | None = None  # every assistant turn at least this label
    cut_at_first_fail: bool = False  # keep the chain up to the exchange before its first fail
    prefer_gold: bool = False  # use gold edits; an edited turn counts as excellent
    checkpoint: str | None = None  # every assistant turn from this checkpoint
    annotator: str | None = None  # only this annotator's ratings count
    mode: str | None = None
    since: str | None = None  # session created at or after (ISO date or time)
    until: str | None = None  # session created before
    min_turns: int = 1  # assistant turns in the chain
    raters: str = "humans"  # whose ratings count: humans | judges | all
    human_wins: bool = False  # where a person rated a turn, only people's labels count
    min_score: float | None = None  # every assistant turn scored at least this by the judges (AlpaGasus: 4.5)
    selection: str | None = None  # only the chains of this named selection (`limachat select`)
    gold_from: str = "humans"  # with prefer_gold: humans' edits, teachers' revisions, or both (a person's winning)

    def __post_init__(self):
        if self.raters not in RATERS:
            raise ValueError(f"--raters must be one of {', '.join(RATERS)}, not {self.raters!r}")
        if self.gold_from not in GOLD_SOURCES:
            raise ValueError(f"--gold-from must be one of {', '.join(GOLD_SOURCES)}, not {self.gold_from!r}")
        if self.min_score is not None and not 0 <= self.min_score <= 5:
            raise ValueError(f"--min-score must be from 0 to 5, not {self.min_score}")
        if self.min_label is not None and self.min_label not in LABELS:
            raise ValueError(f"--min-label must be one of {', '.join(LABELS)}, not {self.min_label!r}")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")


@dataclass
class Chain:
    session: dict[str, Any]
    turns: list[dict[str, Any]]  # user, assistant, user, assistant ...
    labels: list[str]  # one per assistant turn: fail | pass | excellent | unrated
    annotators: list[str]
    leaf: str = ""  # the id of the branch's last turn: the chain's name in a selection

    def messages(self) -> list[dict[str, str]]:
        system = (self.session.get("meta") or {}).get("system")
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": t["role"], "content": t["content"]} for t in self.turns]

    def provenance(self) -> dict[str, Any]:
        """Where the chain came from (trainers ignore it); a study's chain says which study and slot."""
        out = {"session": self.session["id"], "mode": self.session["mode"],
               "checkpoints": sorted({t["checkpoint"] or "imported" for t in self.turns if t["role"] == "assistant"}),
               "labels": self.labels, "annotators": self.annotators, "turn_ids": [t["id"] for t in self.turns]}
        if self.session.get("study"):
            out.update(study=self.session["study"], slot=self.session["slot"])
        return out


def chains(store: Store, f: Filters = Filters()) -> Iterator[Chain]:
    sessions = store.sessions_where(f.mode, f.since, f.until)
    ratings = store.current_ratings(f.annotator)
    label = store.lowest_labels(f.annotator, ratings, raters=f.raters, human_wins=f.human_wins)
    keep = store.takes(f.raters)
    who: dict[str, set[str]] = defaultdict(set)
    for turn, annotator, _ in ratings:
        if keep(annotator):
            who[turn].add(annotator)
    gold = store.gold_edits(source=f.gold_from) if f.prefer_gold else {}
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
            key = dumps(chain.messages())
            if key not in seen:
                seen.add(key)
                yield chain


def _select(session, path, label, who, gold, scores, f: Filters) -> Chain | None:
    kept: list[dict] = []
    labels: list[str] = []
    for i in range(0, len(path) - 1, 2):
        user, reply = path[i], path[i + 1]
        if reply["status"] != "ok" or not reply["content"]:
            break
        lab = label.get(reply["id"], UNRATED)
        if f.prefer_gold and reply["id"] in gold:
            reply, lab = {**reply, "content": gold[reply["id"]]}, "excellent"
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
    return Chain(session, kept, labels, annotators, path[-1]["id"])


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
