"""Rating queues: a named, ordered set of stored replies, each wanting so many ratings, walked one reply
at a time (its conversation above it) by whoever may rate it, as Argilla distributes records and Label
Studio or Langfuse queue them. No Gradio here: the Queue tab and `limachat queue` call these.

Sources of a queue's replies:
- `study`: a split study's shared conversations (`study.assignments`): each reply wants as many
  ratings as the study has raters per conversation, and is offered to the conversation's raters but
  its driver (who rates in Compare). The queue grows as the drivers' conversations do.
- `filter`: the replies of the chains an export filter picks (`dialogues.export.Filters`).
- `disagree`: replies two or more people labelled differently.
- `judge-disagrees`: replies an LLM judge labelled otherwise than the people (their lowest label).
- `one-rater`: replies only one person rated.

A queue is to `rate` (nobody sees another's label before giving theirs) or to `adjudicate`: a
reviewer the queue names sees everyone's labels and reasons and gives the final label, stored as the
rating of `adjudicator/<reviewer>` (see `Store.adjudicate`); the others' labels stay.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from limachat.dialogues import study as studies
from limachat.dialogues.export import Filters, chains
from limachat.dialogues.store import Store
from limachat.dialogues.values import PURPOSES, QUEUE_SOURCES, RANK

SOURCES = QUEUE_SOURCES
NAME = re.compile(r"^[\w.-]{1,64}$")


def _people(store: Store) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """turn -> person -> label (people only), and the kinds of every declared annotator."""
    kinds = store.annotator_kinds()
    by_turn: dict[str, dict[str, str]] = defaultdict(dict)
    for turn, who, label in store.current_ratings():
        if kinds.get(who, "human") == "human":
            by_turn[turn][who] = label
    return by_turn, kinds


def _shared(store: Store, st: dict[str, Any]) -> dict[str, set[str]]:
    """A split study's replies so far (each lane's newest branch, slot by slot), each with who may rate it
    from the queue: its conversation's raters but the driver."""
    sessions = studies.driven(store, st)
    out: dict[str, set[str]] = {}
    for a in studies.assignments(st):
        s = sessions.get(a.slot.index)
        if s is None or len(a.raters) < 2:
            continue
        for lane in ("a", "b"):
            for t in store.lane_replies(s, lane):
                if t["status"] == "ok":
                    out[t["id"]] = set(a.raters) - {a.driver}
    return out


def candidates(store: Store, source: str, filters: Filters | None = None, study: str | None = None) -> list[str]:
    """The replies a new queue of `source` holds (oldest first)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    if source == "study":
        if not study:
            raise ValueError("source study: name the study (--study)")
        st = store.study(study)
        if not st.get("raters_per_conversation") or st["raters_per_conversation"] < 2:
            raise ValueError(
                f"study {study!r} does not share its conversations (create it with --raters-per-conversation 2 or more)"
            )
        return list(_shared(store, st))
    if source == "filter":
        f = filters or Filters()
        return [t["id"] for c in chains(store, f) for t in c.turns if t["role"] == "assistant"]
    allowed = None
    if study:
        allowed = {t["id"] for c in chains(store, Filters(study=study)) for t in c.turns if t["role"] == "assistant"}
    by_turn, kinds = _people(store)
    if source == "disagree":
        picked = [t for t, labels in by_turn.items() if len(set(labels.values())) > 1]
    elif source == "one-rater":
        picked = [t for t, labels in by_turn.items() if len(labels) == 1]
    else:
        judged: dict[str, set[str]] = defaultdict(set)
        for turn, who, label in store.current_ratings():
            if kinds.get(who) == "judge":
                judged[turn].add(label)
        picked = [
            t
            for t, labels in by_turn.items()
            if t in judged and judged[t] - {min(labels.values(), key=RANK.__getitem__)}
        ]
    return sorted(t for t in picked if allowed is None or t in allowed)  # ids are time-ordered: oldest first


def create(
    store: Store,
    name: str,
    source: str,
    *,
    filters: Filters | None = None,
    study: str | None = None,
    needs: int | None = None,
    purpose: str = "rate",
    adjudicators: list[str] | None = None,
) -> dict[str, Any]:
    """A new queue; bad input is a ValueError naming the option."""
    name = (name or "").strip()
    if not NAME.match(name):
        raise ValueError(f"queue name {name!r}: use 1-64 letters, digits, '.', '-' or '_'")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}")
    items = candidates(store, source, filters, study)
    st = store.study(study) if study else None
    if needs is None:
        needs = st["raters_per_conversation"] if source == "study" else 1 if purpose == "adjudicate" else 2
    if not isinstance(needs, int) or isinstance(needs, bool) or not 1 <= needs <= 100:
        raise ValueError(f"needs: ratings per reply, a whole number from 1 to 100, not {needs!r}")
    people = sorted({a.strip() for a in (adjudicators or []) if a and a.strip()}) or (st["adjudicators"] if st else [])
    if purpose == "adjudicate" and not people:
        raise ValueError("an adjudication queue names who may adjudicate (--adjudicators, or the study's)")
    said = " ".join([source, *(filters.args() if source == "filter" and filters else [])])
    store.create_queue(
        name, purpose=purpose, source=said, needs=needs, turn_ids=items, study=study, adjudicators=people
    )
    return store.queue(name)


def refresh(store: Store, queue: dict[str, Any]) -> int:
    """A study's queue takes the replies its conversations gained since; other queues stay as made."""
    if queue["source"] != "study" or not queue["study"]:
        return 0
    have = set(store.queue_items(queue["name"]))
    new = [t for t in _shared(store, store.study(queue["study"])) if t not in have]
    return store.add_queue_items(queue["name"], new) if new else 0  # no write when none (a read-only home)


def may_work(queue: dict[str, Any], annotator: str | None) -> str:
    """The annotator, if they may work this queue; else a ValueError saying who may."""
    if not annotator:
        raise ValueError("Enter your name at the top of the page first: a queue keeps each annotator's own labels.")
    if queue["purpose"] == "adjudicate" and annotator not in queue["adjudicators"]:
        raise ValueError(
            f"{annotator!r} may not adjudicate queue {queue['name']!r} (its adjudicators: "
            f"{', '.join(queue['adjudicators'])})"
        )
    return annotator


@dataclass
class Item:
    turn_id: str
    place: int  # from 1
    total: int
    labels: dict[str, tuple[str, str | None]]  # person -> (label, reason): shown only to an adjudicator


def _offered(store: Store, queue: dict[str, Any]) -> dict[str, set[str]] | None:
    """For a study's queue: turn -> who may rate it; None for any other queue (anyone may)."""
    if queue["source"] != "study" or not queue["study"]:
        return None
    return _shared(store, store.study(queue["study"]))


def state(store: Store, queue: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, tuple[str, str | None]]]]:
    """(the queue's replies, turn -> person -> (label, reason)) with people's and adjudicators' current labels."""
    items = store.queue_items(queue["name"])
    kinds = store.annotator_kinds()
    labels: dict[str, dict[str, tuple[str, str | None]]] = defaultdict(dict)
    for turn, who, label, reason in store.ratings_of(items):
        if kinds.get(who, "human") in ("human", "adjudicator"):
            labels[turn][who] = (label, reason)
    return items, labels


def _people_only(labels: dict[str, tuple[str, str | None]], kinds: dict[str, str]) -> dict[str, tuple]:
    return {w: v for w, v in labels.items() if kinds.get(w, "human") == "human"}


def next_item(store: Store, queue: dict[str, Any], annotator: str) -> Item | None:
    """The first reply of the queue the annotator may still work on: to rate, one they have not rated that
    wants more ratings; to adjudicate, one no adjudicator has settled. None: nothing left for them."""
    refresh(store, queue)
    items, labels = state(store, queue)
    kinds = store.annotator_kinds()
    offered = _offered(store, queue)
    for place, turn in enumerate(items, 1):
        mine = labels.get(turn, {})
        if queue["purpose"] == "adjudicate":
            if any(kinds.get(w) == "adjudicator" for w in mine):
                continue
            return Item(turn, place, len(items), _people_only(mine, kinds))
        people = _people_only(mine, kinds)
        if annotator in people or len(people) >= queue["needs"]:
            continue
        if offered is not None and annotator not in offered.get(turn, set()):
            continue
        return Item(turn, place, len(items), {})
    return None


def status(store: Store, queue: dict[str, Any]) -> dict[str, Any]:
    """Replies, replies with all their ratings (or settled), and per annotator how many they gave (in a
    queue to adjudicate, the adjudicators' final labels)."""
    refresh(store, queue)
    items, labels = state(store, queue)
    kinds = store.annotator_kinds()
    per: dict[str, int] = defaultdict(int)
    done = 0
    for turn in items:
        mine = labels.get(turn, {})
        for who in mine:
            if (kinds.get(who) == "adjudicator") == (queue["purpose"] == "adjudicate"):
                per[who] += 1
        if queue["purpose"] == "adjudicate":
            done += any(kinds.get(w) == "adjudicator" for w in mine)
        else:
            done += len(_people_only(mine, kinds)) >= queue["needs"]
    return {"queue": queue["name"], "items": len(items), "done": done, "by annotator": dict(sorted(per.items()))}


def status_line(queue: dict[str, Any], s: dict[str, Any]) -> str:
    what = "settled" if queue["purpose"] == "adjudicate" else f"with their {queue['needs']} ratings"
    by = ", ".join(f"{w}: {n}" for w, n in s["by annotator"].items()) or "nobody yet"
    return f"queue {queue['name']} ({queue['purpose']}, {queue['source']}): {s['done']} of {s['items']} replies {what}; by annotator: {by}"
