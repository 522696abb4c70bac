"""Preference data out of the store: pairs for DPO and reward models, labelled replies for KTO.

TRL's conversational formats (docs/preference.md):
- preference: {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}
- kto:        {"prompt": [messages], "completion": [assistant message], "label": true | false}

A pair is two replies to the same prompt, the prompt being the whole conversation the model was sent
before them. Pairs come from four sources:
- `verdict`: a compare verdict (a person's, or a pairwise judge's with --raters judges|all) whose two
  sides were sent the same conversation: always at the first exchange, later only while the two
  histories are still identical (each side keeps its own history);
- `edit`: a gold edit (chosen) against the reply it corrects (rejected);
- `label`: two replies at the same parent (regenerations, or sides sharing a prompt turn) whose
  labels differ under the rater options, the higher one chosen.
Ties give no pair: a tie verdict, an `inconsistent` judge, equal labels, two replies of the same text
(an edit that changes nothing among them).
Every row carries its provenance under "limachat", which trainers ignore.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from limachat.dialogues.export import Filters, reasons_of
from limachat.dialogues.formats import dumps
from limachat.dialogues.reads import sent
from limachat.dialogues.store import RANK, Store

SOURCES = ("verdict", "edit", "label")
# Filters that shape a chain and mean nothing for one reply or one pair.
NO_FILTERS = Filters()
CHAIN_ONLY = ("min_label", "cut_at_first_fail", "prefer_gold", "min_turns", "min_score")


def check_filters(f: Filters, fmt: str) -> None:
    """A chain-only filter given with --format preference|kto is refused, naming it."""
    for name in CHAIN_ONLY:
        if getattr(f, name) != Filters.__dataclass_fields__[name].default:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} shapes training chains; --format {fmt} writes single replies: drop {flag}")


@dataclass
class Tally:
    """What each source gave, and what it left out and why (the CLI's summary, the Collect tab's preview)."""

    pairs: Counter
    skipped: Counter

    def line(self) -> str:
        given = ", ".join(f"{self.pairs[s]} from {s}s" for s in SOURCES)
        left = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()) if n)
        return given + (f" (no pair: {left})" if left else "")


class _World:
    """Everything a pass over the store needs, read once."""

    def __init__(self, store: Store, f: Filters):
        self.store, self.f = store, f
        self.sessions = store.sessions_where(f.mode, f.since, f.until, f.study)
        self.turns = {t["id"]: t for t in store.chain_turns() if t["session_id"] in self.sessions}
        self.kinds = store.annotator_kinds()
        self.keep = store.takes(f.raters, self.kinds)
        self.ratings = [r for r in store.current_ratings(f.annotator) if r[0] in self.turns and self.keep(r[1])]
        self.labels = store.lowest_labels(f.annotator, self.ratings, raters=f.raters, human_wins=f.human_wins)
        self.reasons = reasons_of(store, self.keep, f.annotator)
        self.raters: dict[str, set[str]] = defaultdict(set)
        for turn, who, _ in self.ratings:
            self.raters[turn].add(who)
        self.on_selection: set[str] | None = None
        if f.selection:
            self.on_selection = set()
            for leaf in store.selection(f.selection):
                node = self.turns.get(leaf)
                while node is not None:
                    self.on_selection.add(node["id"])
                    node = self.turns.get(node["parent_id"])
        self._prompts: dict[str, list[dict[str, str]]] = {}

    def prompt(self, reply: dict) -> list[dict[str, str]]:
        """The conversation the model was sent for `reply`: the session's system message, then its branch."""
        parent = reply["parent_id"]
        if parent not in self._prompts:
            branch, node = [], self.turns.get(parent)
            while node is not None:
                branch.append(node)
                node = self.turns.get(node["parent_id"])
            system = (self.sessions[reply["session_id"]].get("meta") or {}).get("system")
            head = [{"role": "system", "content": system}] if system else []
            self._prompts[parent] = head + sent(branch[::-1])
        return self._prompts[parent]

    def usable(self, reply: dict | None) -> bool:
        return reply is not None and reply["role"] == "assistant" and reply["status"] == "ok" and bool(reply["content"])

    def in_scope(self, *replies: dict) -> bool:
        """--checkpoint (either reply by it) and --selection (the prompt on a selected chain)."""
        if self.f.checkpoint and not any(r["checkpoint"] == self.f.checkpoint for r in replies):
            return False
        return self.on_selection is None or replies[0]["parent_id"] in self.on_selection

    def who(self, names) -> list[dict[str, str]]:
        return [{"name": n, "kind": self.kinds.get(n, "human")} for n in sorted(names)]

    def provenance(self, source: str, chosen: dict, rejected: dict | None, annotators, **extra) -> dict[str, Any]:
        session = self.sessions[chosen["session_id"]]
        return {
            "source": source,
            "session": session["id"],
            "mode": session["mode"],
            "study": session.get("study"),
            "prompt_turn": chosen["parent_id"],
            "chosen_turn": chosen["id"] if source != "edit" else None,
            "rejected_turn": rejected["id"] if rejected else None,
            "checkpoints": {
                "chosen": chosen["checkpoint"] if source != "edit" else None,
                "rejected": rejected["checkpoint"] if rejected else None,
            },
            "annotators": self.who(annotators),
            **extra,
        }


def _reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _pair(w: _World, chosen: dict, rejected: dict, source: str, annotators, chosen_text: str | None = None, **extra):
    if (chosen["content"] if chosen_text is None else chosen_text).strip() == rejected["content"].strip():
        return None  # the same text on both sides teaches nothing: a tie
    return {
        "prompt": w.prompt(rejected),
        "chosen": _reply(chosen["content"] if chosen_text is None else chosen_text),
        "rejected": _reply(rejected["content"]),
        "limachat": w.provenance(source, chosen, rejected, annotators, **extra),
    }


def _verdict_pairs(w: _World, skipped: Counter) -> Iterator[dict]:
    rows = [v for v in w.store.current_verdicts() if v["session_id"] in w.sessions and w.keep(v["annotator"])]
    if w.f.annotator:
        rows = [v for v in rows if v["annotator"] == w.f.annotator]
    if w.f.human_wins:  # a person's verdict on a pair silences the judges' on it
        by_human = {(v["turn_a"], v["turn_b"]) for v in rows if w.kinds.get(v["annotator"], "human") == "human"}
        rows = [
            v
            for v in rows
            if w.kinds.get(v["annotator"], "human") == "human" or (v["turn_a"], v["turn_b"]) not in by_human
        ]
    for v in rows:
        a, b = w.turns.get(v["turn_a"]), w.turns.get(v["turn_b"])
        if not (w.usable(a) and w.usable(b)) or not w.in_scope(a, b):
            continue
        if v["verdict"] not in ("a", "b"):
            skipped[f"{v['verdict']} verdicts"] += 1
            continue
        if w.prompt(a) != w.prompt(b):
            skipped["verdicts on sides with different histories"] += 1
            continue
        chosen, rejected = (a, b) if v["verdict"] == "a" else (b, a)
        yield _pair(w, chosen, rejected, "verdict", [v["annotator"]], verdict=v["verdict"])


def _edit_pairs(w: _World, skipped: Counter) -> Iterator[dict]:
    for turn, (text, editor) in w.store.gold_editors(source=w.f.gold_from).items():
        reply = w.turns.get(turn)
        if not w.usable(reply) or not w.in_scope(reply) or (w.f.annotator and editor != w.f.annotator):
            continue
        yield _pair(w, reply, reply, "edit", [editor], chosen_text=text)


def _label_pairs(w: _World, skipped: Counter) -> Iterator[dict]:
    siblings: dict[str, list[dict]] = defaultdict(list)
    for t in w.turns.values():
        if w.usable(t) and t["id"] in w.labels:
            siblings[t["parent_id"]].append(t)
    for group in siblings.values():
        for i, x in enumerate(group):
            for y in group[i + 1 :]:
                lx, ly = w.labels[x["id"]], w.labels[y["id"]]
                if not w.in_scope(x, y):
                    continue
                if lx == ly:
                    skipped["siblings with equal labels"] += 1
                    continue
                chosen, rejected = (x, y) if RANK[lx] > RANK[ly] else (y, x)
                yield _pair(
                    w,
                    chosen,
                    rejected,
                    "label",
                    w.raters[x["id"]] | w.raters[y["id"]],
                    labels={"chosen": w.labels[chosen["id"]], "rejected": w.labels[rejected["id"]]},
                )


def _fresh(seen: set[str] | None, key: list, tally: Tally) -> bool:
    """With `--dedupe` (`seen` given): whether this row's key is new; a repeat is counted and left out."""
    if seen is None:
        return True
    text = dumps(key)
    if text in seen:
        tally.skipped["duplicates"] += 1
        return False
    seen.add(text)
    return True


def pairs(store: Store, f: Filters = NO_FILTERS, *, dedupe: bool = False, tally: Tally | None = None) -> Iterator[dict]:
    """Preference rows from every source, in source order. `dedupe`: one row per (prompt, chosen, rejected)."""
    w = _World(store, f)
    tally = tally if tally is not None else Tally(Counter(), Counter())
    seen: set[str] | None = set() if dedupe else None
    for source, make in (("verdict", _verdict_pairs), ("edit", _edit_pairs), ("label", _label_pairs)):
        for row in make(w, tally.skipped):
            if row is None:
                tally.skipped["pairs of the same text"] += 1
                continue
            row["limachat"].setdefault("verdict", None)
            row["limachat"].setdefault("labels", None)
            if not _fresh(seen, [row["prompt"], row["chosen"], row["rejected"]], tally):
                continue
            tally.pairs[source] += 1
            yield row


def kto_rows(
    store: Store,
    f: Filters = NO_FILTERS,
    *,
    pass_is_good: bool = False,
    dedupe: bool = False,
    tally: Tally | None = None,
) -> Iterator[dict]:
    """One row per rated reply: excellent is good, fail is bad, pass is good only with `pass_is_good`
    (left out otherwise). Several annotators' labels resolve as the rater options say."""
    w = _World(store, f)
    tally = tally if tally is not None else Tally(Counter(), Counter())
    seen: set[str] | None = set() if dedupe else None
    for t in sorted(w.turns.values(), key=lambda t: (t["created"], t["id"])):
        label = w.labels.get(t["id"])
        if label is None or not w.usable(t) or not w.in_scope(t):
            continue
        if label == "pass" and not pass_is_good:
            tally.skipped["pass replies (--pass-is-good counts them as good)"] += 1
            continue
        row = {
            "prompt": w.prompt(t),
            "completion": _reply(t["content"]),
            "label": label != "fail",
            "limachat": {
                "source": "label",
                "session": t["session_id"],
                "mode": w.sessions[t["session_id"]]["mode"],
                "study": w.sessions[t["session_id"]].get("study"),
                "prompt_turn": t["parent_id"],
                "turn": t["id"],
                "checkpoint": t["checkpoint"],
                "rating": label,
                "annotators": w.who(w.raters[t["id"]]),
            },
        }
        if t["id"] in w.reasons:
            row["limachat"]["reasons"] = w.reasons[t["id"]]
        if not _fresh(seen, [row["prompt"], row["completion"], row["label"]], tally):
            continue
        tally.pairs["good" if row["label"] else "bad"] += 1
        yield row


def preview(store: Store, f: Filters = NO_FILTERS) -> Tally:
    """How many pairs each source gives under these filters, and why others give none (nothing written)."""
    tally = Tally(Counter(), Counter())
    for _ in pairs(store, f, tally=tally):
        pass
    return tally
