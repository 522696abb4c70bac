"""A study, as LIMA ran section 6: a fixed prompt set, two or more checkpoints, so many conversations
per checkpoint, each carried to so many exchanges, every reply labelled, blind or not.

Each conversation of the plan is one compare session: two checkpoints answer the same opening prompt
side by side (with more than two checkpoints, the plan cycles through every pair until each
checkpoint has its conversations). By default every annotator works through the whole plan in an
order and with sides of their own, drawn from the study's seed and their name, so a rerun draws the
same. A study with `raters_per_conversation` K splits the plan instead: each conversation has one
driver, who chats it, and K-1 more annotators, who rate its replies from the study's queue
(`queues.py`), so agreement is measured on the same turns. No Gradio here: the Study tab and
`limachat study` both call these functions.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from limachat.dialogues import bundled
from limachat.dialogues.formats import load_prompts
from limachat.dialogues.store import Store

NAME = re.compile(r"^[\w.-]{1,64}$")
BUNDLED_SET = "bundled"
BUNDLED_SETS = {BUNDLED_SET: "prompts.jsonl", "scripted": "scripted.jsonl"}  # name -> file in dialogues/data
HISTORIES = ("own", "shared", "both")  # a study's history option: see migrations.m008_history
CONDITIONS = ("own", "shared")  # what one conversation runs under
RULES = ("verdict", "reference")  # what a shared history continues from
SAID = {
    "own": "own history: each side continues from its own replies",
    ("shared", "verdict"): "shared history: both sides continue from the reply your verdict preferred (A's on a tie)",
    ("shared", "reference"): "shared history: both sides continue from the prompt set's reference reply",
}


def said(history: str, rule: str = "verdict") -> str:
    """The words every page and terminal use for a history option: "own", "shared" (by `rule`) or "both"."""
    if history == "both":
        return f"under each history ({SAID['own']}; {SAID[('shared', rule)]})"
    return SAID["own"] if history == "own" else SAID[("shared", rule)]


class WalkDone(ValueError):
    """The annotator has done every conversation of their walk (not an error: said as news)."""


@dataclass(frozen=True)
class Slot:
    index: int  # its place in the plan (the same for every annotator; `order` is the annotator's walk)
    prompt_id: str
    prompt: str
    sides: dict[str, str]  # lane ("a" left, "b" right) -> checkpoint
    history: str = "own"  # which history its sides continue from: "own" or "shared"
    turns: tuple[str, ...] = ()  # the scripted user turns after the opening prompt (sent in order)
    replies: tuple[str, ...] = ()  # the reference reply to each user turn (the "reference" rule's history)

    def scripted(self, exchange: int) -> str | None:
        """The scripted user turn of `exchange` (2 for the first follow-up), if the prompt set has one."""
        return self.turns[exchange - 2] if 2 <= exchange <= len(self.turns) + 1 else None


def create(
    store: Store,
    name: str,
    checkpoints: list[str],
    *,
    prompts: str | Path | None = None,
    conversations: int = 10,
    turns: int = 3,
    blind: bool = True,
    annotators: list[str] | None = None,
    seed: int = 0,
    known: list[str] | None = None,
    raters_per_conversation: int | None = None,
    adjudicators: list[str] | None = None,
    history: str = "own",
    history_rule: str = "verdict",
) -> dict[str, Any]:
    """Define a study; bad input is a ValueError naming the field. `known`: the checkpoints that can
    be served (a study of one that cannot would never finish). `raters_per_conversation`: split the
    conversations among the annotators, so many rating each (None: everyone walks everything);
    `adjudicators`: who may settle disagreements. `history`: "own", "shared" (by `history_rule`) or
    "both" (every conversation of the plan under each)."""
    name = (name or "").strip()
    if not NAME.match(name):
        raise ValueError(f"study name {name!r}: use 1-64 letters, digits, '.', '-' or '_'")
    checkpoints = [c.strip() for c in checkpoints if c and c.strip()]
    if len(set(checkpoints)) < 2 or len(set(checkpoints)) != len(checkpoints):
        raise ValueError(f"checkpoints: a study needs two or more different checkpoints, got {checkpoints or 'none'}")
    if known is not None:
        unknown = [c for c in checkpoints if c not in known]
        if unknown:
            raise ValueError(f"checkpoints: unknown {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    for key, value in (("conversations", conversations), ("turns", turns)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
            raise ValueError(f"{key}: a whole number from 1 to 1000, not {value!r}")
    set_name, items = prompt_set(prompts)
    if history not in HISTORIES:
        raise ValueError(f"history: one of {', '.join(HISTORIES)}, not {history!r}")
    if history_rule not in RULES:
        raise ValueError(f"history rule: one of {', '.join(RULES)}, not {history_rule!r}")
    if history != "own" and history_rule == "reference":
        short = [p["id"] for p in items if min(len(p.get("turns", ())), len(p.get("replies", ()))) < turns - 1]
        if short:
            raise ValueError(
                f"history rule reference: prompt set {set_name} needs {turns - 1} scripted turns and reference "
                f"replies for each of its prompts; {', '.join(short[:5])}{' and more' if len(short) > 5 else ''} "
                "have fewer"
            )
    people = sorted({a.strip() for a in (annotators or []) if a.strip()})
    k = raters_per_conversation
    if k is not None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max(len(people), 1):
            raise ValueError(
                f"raters per conversation: a whole number from 1 to the number of annotators ({len(people)}), not {k!r}"
            )
        if not people:
            raise ValueError("raters per conversation: list the annotators to split the conversations among")
    judges = sorted({a.strip() for a in (adjudicators or []) if a.strip()})
    store.create_study(
        name,
        prompt_set=set_name,
        prompts=items,
        checkpoints=checkpoints,
        conversations=conversations,
        turns=turns,
        blind=bool(blind),
        annotators=people,
        seed=int(seed),
        raters_per_conversation=k,
        adjudicators=judges,
        history=history,
        history_rule=history_rule,
    )
    if k and k >= 2:  # the shared conversations' queue, which grows as the drivers chat
        store.create_queue(
            study_queue(name), purpose="rate", source="study", needs=k, turn_ids=[], study=name, adjudicators=judges
        )
    return store.study(name)


def prompt_set(prompts: str | Path | None) -> tuple[str, list[dict[str, Any]]]:
    """(name, prompts) of a bundled set ("bundled": 10 opening prompts, the default; "scripted": 12 conversations
    of 3 scripted user turns with reference replies) or of a file."""
    if prompts is None or str(prompts) in BUNDLED_SETS:
        name = str(prompts or BUNDLED_SET)
        return name, load_prompts(bundled(BUNDLED_SETS[name]))
    return Path(prompts).name, load_prompts(Path(prompts))


def study_queue(study_name: str) -> str:
    """The name of a split study's own queue (`queues.py`): its shared conversations' replies."""
    return f"{study_name}-shared"


def conditions(study: dict[str, Any]) -> list[str]:
    """The history conditions a study runs each planned conversation under."""
    history = study.get("history") or "own"
    return ["own", "shared"] if history == "both" else [history]


def _slots(study: dict[str, Any], rng: random.Random) -> list[tuple]:
    """The plan's conversations in slot order, prompts and sides drawn from `rng`; under history "both",
    each conversation twice, once per condition."""
    pairs = list(combinations(study["checkpoints"], 2))
    per_round = len(pairs) * 2 // len(study["checkpoints"])  # conversations each checkpoint gets per round of pairs
    rounds = -(-study["conversations"] // per_round)
    prompts = list(study["prompts"])
    rng.shuffle(prompts)
    slots = []
    for r in range(rounds):
        p = prompts[r % len(prompts)]
        for left, right in pairs:
            for history in conditions(study):
                slots.append((p, left, right, history))
    return [(i, *slot) for i, slot in enumerate(slots)]


def _sided(index: int, p: dict[str, Any], left: str, right: str, history: str, rng: random.Random) -> Slot:
    if rng.random() < 0.5:
        left, right = right, left
    return Slot(
        index,
        p["id"],
        p["prompt"],
        {"a": left, "b": right},
        history,
        tuple(p.get("turns", ())),
        tuple(p.get("replies", ())),
    )


@dataclass(frozen=True)
class Assignment:
    """Who rates one conversation of a split study: its driver chats it, all of `raters` rate it."""

    slot: Slot
    driver: str
    raters: tuple[str, ...]  # the driver among them


def assignments(study: dict[str, Any]) -> list[Assignment]:
    """A split study's conversations, each with its driver and raters (empty when everyone walks
    everything). Each conversation goes to the group of K annotators whose pairs have shared the fewest
    conversations so far (so every pair shares some, where there are conversations enough), then to the
    group with the least work; drivers are then drawn so that drives are as even as the groups allow.
    Seeded: the same split on every machine."""
    k = study.get("raters_per_conversation")
    if not k:
        return []
    rng = random.Random(f"{study['seed']}:{study['name']}")
    slots = [_sided(*s, rng) for s in _slots(study, rng)]
    people = sorted(study["annotators"])
    groups = list(combinations(people, k))
    rng.shuffle(groups)
    load: Counter = Counter()
    together: Counter = Counter()
    chosen = []
    for _ in slots:
        group = min(groups, key=lambda g: (sum(together[q] for q in combinations(g, 2)), sum(load[p] for p in g)))
        chosen.append(group)
        load.update(group)
        together.update(combinations(group, 2))
    return [Assignment(slot, driver, group) for slot, driver, group in zip(slots, _drivers(chosen, people), chosen)]


def _drivers(groups: list[tuple[str, ...]], people: list[str]) -> list[str]:
    """One driver per conversation from its group, drives as even as the groups allow: an assignment
    problem (scipy's), where someone's n-th drive costs n, so a third drive goes to nobody while
    another has one."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    seats = len(groups)  # at most this many drives each
    cost = np.full((len(groups), len(people) * seats), 1e9)
    for row, group in enumerate(groups):
        for p in group:
            col = people.index(p) * seats
            cost[row, col : col + seats] = np.arange(seats) ** 2
    rows, cols = linear_sum_assignment(cost)
    out = [""] * len(groups)
    for row, col in zip(rows, cols):
        out[row] = people[col // seats]
    return out


def plan(study: dict[str, Any], annotator: str) -> list[Slot]:
    """The annotator's walk through the study, in their own order: every slot once, sides drawn; in a
    split study, the conversations they drive."""
    rng = random.Random(f"{study['seed']}:{study['name']}:{annotator}")
    if study.get("raters_per_conversation"):
        mine = [a.slot for a in assignments(study) if a.driver == annotator]
        rng.shuffle(mine)
        return mine
    slots = _slots(study, rng)
    order = list(range(len(slots)))
    rng.shuffle(order)
    return [_sided(*slots[index], rng) for index in order]


def slot_of(study: dict[str, Any], annotator: str | None, index: int) -> Slot | None:
    """Slot `index` as `annotator`'s walk has it (prompts are drawn per walk)."""
    return next((s for s in plan(study, annotator or "") if s.index == index), None)


def check_annotator(study: dict[str, Any], annotator: str | None) -> str:
    if not annotator:
        raise ValueError("Enter your name at the top of the page first: a study keeps each annotator's own walk.")
    if study["annotators"] and annotator not in study["annotators"]:
        raise ValueError(
            f"{annotator!r} is not an annotator of study {study['name']!r} (its annotators: "
            f"{', '.join(study['annotators'])})"
        )
    return annotator


@dataclass
class Conversation:
    """One slot of one annotator's walk, as far as it has gone."""

    slot: Slot
    session: str | None = None
    exchanges: int = 0  # exchanges both lanes have reached
    lanes: dict[str, tuple[int, int]] = field(default_factory=dict)  # lane -> (replies on its latest branch, rated)

    @property
    def replies(self) -> int:
        return sum(n for n, _ in self.lanes.values())

    @property
    def rated(self) -> int:
        return sum(r for _, r in self.lanes.values())

    def reached(self, turns: int) -> bool:
        return self.exchanges >= turns

    def done(self, turns: int) -> bool:
        return self.reached(turns) and self.rated >= self.replies


def _sessions(store: Store, study: dict[str, Any], annotator: str) -> dict[int, dict[str, Any]]:
    return {s["slot"]: s for s in store.study_sessions(study["name"], annotator)}  # oldest first: the newest wins


def _conversation(store: Store, slot: Slot, session: dict[str, Any] | None, annotator: str) -> Conversation:
    """How far the annotator got with one slot: exchanges both sides reached, replies, replies rated."""
    c = Conversation(slot)
    if session is None:
        return c
    c.session = session["id"]
    labels = store.current_labels(session["id"], annotator)
    reached = []
    for lane in ("a", "b"):
        replies = store.lane_replies(session, lane)
        reached.append(max((t["exchange"] for t in replies if t["status"] == "ok"), default=0))
        c.lanes[lane] = (len(replies), sum(t["id"] in labels for t in replies))
    c.exchanges = min(reached)
    return c


def walk(store: Store, study: dict[str, Any], annotator: str) -> Iterator[Conversation]:
    """The annotator's plan, slot by slot in their order, each with how far it got (read as it is asked
    for: a caller that stops early reads no further)."""
    by_slot = _sessions(store, study, annotator)
    for slot in plan(study, annotator):
        yield _conversation(store, slot, by_slot.get(slot.index), annotator)


def conversation_at(store: Store, study: dict[str, Any], annotator: str, index: int) -> tuple[Conversation, int, int]:
    """One slot of the annotator's walk: (its conversation, its place in the walk from 1, the walk's length)."""
    slots = plan(study, annotator)
    place = next(n for n, s in enumerate(slots) if s.index == index)
    return (
        _conversation(store, slots[place], _sessions(store, study, annotator).get(index), annotator),
        place + 1,
        len(slots),
    )


def next_conversation(store: Store, study: dict[str, Any], annotator: str) -> Conversation | None:
    """The first conversation of the annotator's walk not yet done (one started is resumed); None when
    the whole walk is done."""
    return next((c for c in walk(store, study, check_annotator(study, annotator)) if not c.done(study["turns"])), None)


def annotators_of(store: Store, study: dict[str, Any]) -> list[str]:
    return study["annotators"] or sorted(
        {s["annotator"] for s in store.study_sessions(study["name"]) if s["annotator"]}
    )


def progress(store: Store, study: dict[str, Any]) -> list[dict[str, Any]]:
    """The progress board: per annotator and checkpoint, conversations done, replies rated, what is left.
    In a split study, "conversations done" counts the ones they drive, and "replies rated" every reply
    they are to rate: their own conversations' and the shared ones in the queue."""
    if study.get("raters_per_conversation"):
        return _split_progress(store, study)
    rows = []
    of = study["conversations"] * len(conditions(study))
    goal_turns = of * study["turns"]
    for who in annotators_of(store, study):
        tally = {c: {"done": 0, "rated": 0, "started": 0} for c in study["checkpoints"]}
        for conv in walk(store, study, who):
            for lane, checkpoint in conv.slot.sides.items():
                t = tally[checkpoint]
                t["started"] += conv.session is not None
                t["done"] += conv.done(study["turns"])
                t["rated"] += conv.lanes.get(lane, (0, 0))[1]
        for checkpoint, t in tally.items():
            done = min(t["done"], of)
            rows.append(_row(who, checkpoint, t["started"], done, of, t["rated"], goal_turns))
    return rows


def _row(who: str, checkpoint: str, started: int, done: int, of: int, rated: int, goal: int) -> dict[str, Any]:
    return {
        "annotator": who,
        "checkpoint": checkpoint,
        "started": started,
        "conversations done": f"{done} / {of}",
        "replies rated": f"{rated} / {goal}",
        "left": f"{_n(of - done, 'conversation')}, {_n(max(goal - rated, 0), 'reply')}",
    }


def driven(store: Store, study: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A split study's sessions by slot: the driver's (the newest, should there be two)."""
    drivers = {a.slot.index: a.driver for a in assignments(study)}
    return {s["slot"]: s for s in store.study_sessions(study["name"]) if drivers.get(s["slot"]) == s["annotator"]}


def _split_progress(store: Store, study: dict[str, Any]) -> list[dict[str, Any]]:
    sessions = driven(store, study)
    tally = {
        (who, c): {"done": 0, "of": 0, "rated": 0, "goal": 0, "started": 0}
        for who in study["annotators"]
        for c in study["checkpoints"]
    }
    for a in assignments(study):
        for who in a.raters:
            conv = _conversation(store, a.slot, sessions.get(a.slot.index), who)
            for lane, checkpoint in a.slot.sides.items():
                t = tally[(who, checkpoint)]
                if who == a.driver:
                    t["of"] += 1
                    t["started"] += conv.session is not None
                    t["done"] += conv.done(study["turns"])
                t["rated"] += conv.lanes.get(lane, (0, 0))[1]
                t["goal"] += study["turns"]
    return [_row(who, c, t["started"], t["done"], t["of"], t["rated"], t["goal"]) for (who, c), t in tally.items()]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun if count == 1 else ('replies' if noun == 'reply' else noun + 's')}"


def status_line(
    study: dict[str, Any], conv: Conversation | None, place: int | None = None, total: int | None = None
) -> str:
    """What the Compare tab says about the annotator's place in the study."""
    turns = study["turns"]
    if conv is None:
        shared = (
            f" Rate the conversations you share in the Queue tab (queue **{study_queue(study['name'])}**)."
            if (study.get("raters_per_conversation") or 0) > 1
            else ""
        )
        return f"Study **{study['name']}**: your walk is done.{shared} See the Study tab for the report."
    where = f"conversation {place} of {total}" if place else "a conversation"
    if study.get("history", "own") != "own":
        where += f" ({said(conv.slot.history, study['history_rule'])})"
    if conv.reached(turns):
        left = conv.replies - conv.rated
        todo = f"Rate its {left} unrated repl{'ies' if left != 1 else 'y'}, then give" if left > 0 else "Give"
        return (
            f"Study **{study['name']}**, {where}: it has reached its {turns} turns. "
            f"{todo} a verdict on the last exchange (a / t / b) and on the whole conversation (A / T / B), "
            "then press **n** for the next prompt."
        )
    then = "write the next message"
    if conv.slot.scripted(conv.exchanges + 1):
        then = "press **n** for the scripted next question"
    if conv.slot.history == "shared" and study["history_rule"] == "verdict" and conv.exchanges:
        then = "give a verdict (a / t / b), then " + then
    return (
        f"Study **{study['name']}**, {where}: turn {conv.exchanges + 1} of {turns}. Rate each reply (1 / 2 / 3), "
        f"then {then}."
    )
