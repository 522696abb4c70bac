"""Compare tab handlers: one user turn to two checkpoints at once, each side with its own history or
one shared history.

Side "a" is shown on the left, "b" on the right; each is its own branch of the session's turn tree
(lane "a" / "b"), so each checkpoint sees only its own earlier answers. With a shared history
(`state["history"] == "shared"`), each new question of both sides follows one reply instead: the one
the exchange verdict preferred (A's on a tie; rule "verdict") or the prompt set's reference reply
(rule "reference"), so the tree itself says which history each reply saw. In blind mode the session
draws which checkpoint sits on which side, shows them as A and B, and says who was who only when
the session is closed.

`state = {"session", "a": [ids], "b": [ids], "names": {"a": checkpoint, "b": checkpoint}, "blind",
"closed", "origin": {"set", "id", "text"} | None, "study": name | None, "slot": int | None, "history":
"own" | "shared", "rule": "verdict" | "reference"}`. A study conversation (see dialogues/study.py) comes
with its sides, blindness and history fixed by the study's plan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from limachat.demo.answer import Deps, answer, merged
from limachat.demo.history import NAME_FIRST, View, check_message, label_of, listed, view
from limachat.dialogues import bench, study

LANES = ("a", "b")


def blank() -> dict:
    return {
        "session": None,
        "a": [],
        "b": [],
        "names": None,
        "blind": False,
        "closed": False,
        "origin": None,
        "study": None,
        "slot": None,
        "history": "own",
        "rule": "verdict",
    }


def side_names(state: dict) -> dict[str, str]:
    """What the two sides are called on screen."""
    if state["names"] and not (state["blind"] and not state["closed"]):
        return dict(state["names"])
    return {"a": "A", "b": "B"}


def blind_as(state: dict, lane: str) -> str | None:
    """In a blind session, until it is closed, what limachat writes (errors, notices) calls the side
    "A" or "B" and leaves out any detail that names a model or endpoint."""
    return lane.upper() if state["blind"] and not state["closed"] else None


def side(deps: Deps, state: dict, lane: str, annotator: str | None) -> View:
    return view(deps.store, state[lane][-1] if state[lane] else None, annotator, blind_as(state, lane))


def views(deps: Deps, state: dict, annotator: str | None) -> tuple[View, View]:
    return side(deps, state, "a", annotator), side(deps, state, "b", annotator)


async def _views(deps: Deps, state: dict, annotator: str | None) -> tuple[View, View]:
    return await deps.store.aio.read(views, deps, state, annotator)


def prompt_set(path: str | Path | None) -> tuple[str, list[dict[str, str]]]:
    """(name, prompts) of a bundled set or a file the user loaded."""
    return study.prompt_set(path)


def pick_prompt(state: dict, set_name: str, prompt: dict[str, str]) -> tuple[dict, str]:
    """Put a prompt of the set in the input box; a session started with it records where it came from."""
    return {**state, "origin": {"set": set_name, "id": prompt["id"], "text": prompt["prompt"]}}, prompt["prompt"]


async def _start(deps: Deps, state: dict, text: str, left: str, right: str, blind: bool, annotator: str | None) -> dict:
    fixed = state["names"]  # a study's conversation arrives with the sides its plan drew, and its blindness
    if fixed:
        (left, right), blind = (fixed["a"], fixed["b"]), state["blind"]
    if left == right:
        raise ValueError("Pick two different checkpoints to compare.")
    for name in (left, right):
        if name not in deps.checkpoints:
            raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(deps.names)}")
    names = fixed or {"a": left, "b": right}
    if blind and not fixed and deps.rng.random() < 0.5:
        names = {"a": right, "b": left}
    origin = state["origin"] if state["origin"] and state["origin"]["text"].strip() == text.strip() else None
    sid = await deps.store.aio.start_session(
        "blind" if blind else "compare",
        annotator=annotator or None,
        prompt_set=origin["set"] if origin else None,
        prompt=origin["id"] if origin else None,
        meta={"lanes": names, "history": state.get("history") or "own", "rule": state.get("rule") or "verdict"},
        study=state.get("study"),
        slot=state.get("slot"),
    )
    return {**state, "session": sid, "names": names, "blind": bool(blind)}


async def send(
    deps: Deps, state: dict, text: str, left: str, right: str, blind: bool, annotator: str | None = None
) -> AsyncIterator[tuple[dict, View, View]]:
    """The same user turn to both sides; both replies stream at once."""
    if not (text or "").strip():
        yield (state, *await _views(deps, state, annotator))
        return
    if state.get("bench"):
        raise ValueError("A benchmark's answers take no more messages: press New comparison to start another.")
    if state["closed"]:
        raise ValueError("This session is closed: press New comparison to start another.")
    check_message(text)
    if state["session"] is None:
        state = await _start(deps, state, text, left, right, blind, annotator)
    sid, store = state["session"], deps.store.aio
    parents = {lane: state[lane][-1] if state[lane] else None for lane in LANES}
    if state.get("history") == "shared" and state["a"] and state["b"]:
        shared = await store.read(continued_from, deps.store, state, annotator)
        if state.get("rule") == "reference":
            shared = await store.add_reference_turn(sid, *shared)
        parents = {lane: shared for lane in LANES}
    users = {lane: await store.add_user_turn(sid, text, parent_id=parents[lane], lane=lane) for lane in LANES}
    names = state["names"]
    live = {lane: await store.read(view, deps.store, users[lane], annotator, blind_as(state, lane)) for lane in LANES}
    asked = dict(live)
    async for lane, r in merged({lane: answer(deps, sid, users[lane], names[lane], lane) for lane in LANES}):
        live[lane] = asked[lane].growing(r, names[lane], blind_as(state, lane))
        state = {**state, lane: live[lane].ids}
        yield state, live["a"], live["b"]
    yield (state, *await _views(deps, state, annotator))


def continued_from(store, state: dict, annotator: str | None) -> str | tuple[str, str]:
    """Under a shared history, what both sides' next question follows: the reply the annotator's verdict on
    the latest exchange preferred, side A's on a tie (rule "verdict"); under rule "reference", (the user
    turn, the prompt set's reference reply to it) for the caller to store. ValueError when the exchange
    is not ready to continue from."""
    last = {lane: store.turn(state[lane][-1]) for lane in LANES}
    if any(t["role"] != "assistant" or t["status"] != "ok" for t in last.values()):
        raise ValueError("Both sides need a finished reply before the conversation goes on (retry the failed one).")
    if state.get("rule") == "reference":
        st = store.study(state["study"]) if state.get("study") else None
        slot = study.slot_of(st, annotator, state["slot"]) if st else None
        exchange = last["a"]["exchange"]
        if slot is None or len(slot.replies) < exchange:
            raise ValueError(f"Shared history by reference: the prompt set has no reference reply to turn {exchange}.")
        return last["a"]["parent_id"], slot.replies[exchange - 1]
    if not annotator:
        raise ValueError(NAME_FIRST)
    mine = [
        v
        for v in store.verdicts(state["session"])
        if v["annotator"] == annotator and v["turn_a"] == last["a"]["id"] and v["turn_b"] == last["b"]["id"]
    ]
    if not mine:
        raise ValueError(
            "Shared history: give your verdict on this exchange first (a / t / b); both sides then continue "
            "from the reply it prefers (A's on a tie)."
        )
    return last["b" if mine[-1]["verdict"] == "b" else "a"]["id"]


def history_line(state: dict) -> str:
    """What the page says about the history condition of a shared-history comparison ("" for its own)."""
    if state.get("history") != "shared":
        return ""
    return "History: " + study.said("shared", state.get("rule") or "verdict") + "."


async def retry(
    deps: Deps, state: dict, lane: str, annotator: str | None = None
) -> AsyncIterator[tuple[dict, View, View]]:
    """A new reply on one side to its latest question (after an error, or just another try); the
    old reply stays stored."""
    if not state[lane]:
        yield (state, *await _views(deps, state, annotator))
        return
    if state["closed"]:
        raise ValueError("This session is closed: press New comparison to start another.")
    store = deps.store.aio
    last = await store.turn(state[lane][-1])
    user_turn = last["parent_id"] if last["role"] == "assistant" else last["id"]
    asked = await store.read(view, deps.store, user_turn, annotator, blind_as(state, lane))
    other = await store.read(side, deps, state, "b" if lane == "a" else "a", annotator)
    async for r in answer(deps, state["session"], user_turn, state["names"][lane], lane):
        v = asked.growing(r, state["names"][lane], blind_as(state, lane))
        state = {**state, lane: v.ids}
        yield (state, v, other) if lane == "a" else (state, other, v)
    yield (state, *await _views(deps, state, annotator))


def rate(deps: Deps, state: dict, lane: str, index: int, option: str | bool | None, annotator: str | None) -> View:
    label = label_of(option, annotator)
    if label is not None:
        deps.store.rate(side(deps, state, lane, annotator).turn_at(index), annotator, label)
    return side(deps, state, lane, annotator)


def verdict(deps: Deps, state: dict, choice: str, annotator: str | None) -> str:
    """Left better ("a"), right better ("b") or tie, for the latest exchange."""
    if not annotator:
        raise ValueError(NAME_FIRST)
    if not (state["a"] and state["b"]):
        raise ValueError("Send a message first: a verdict compares the two latest replies.")
    deps.store.verdict(state["session"], state["a"][-1], state["b"][-1], choice, annotator)
    return verdicts_line(deps, state, annotator)


def conversation_verdict(deps: Deps, state: dict, choice: str, annotator: str | None) -> str:
    """Left better ("a"), right better ("b") or tie, for the whole conversation (keys A / T / B). A study
    conversation takes it once it has reached its turns."""
    if not annotator:
        raise ValueError(NAME_FIRST)
    if not (state["a"] and state["b"]):
        raise ValueError("Send a message first: this verdict is on the whole conversation.")
    if state.get("study"):
        st = deps.store.study(state["study"])
        conv, _, _ = study.conversation_at(deps.store, st, annotator, state["slot"])
        if conv.session == state["session"] and not conv.reached(st["turns"]):
            raise ValueError(
                f"This study conversation has not reached its {st['turns']} turns yet: judge it as a whole once it has."
            )
    deps.store.conversation_verdict(state["session"], annotator, choice)
    return verdicts_line(deps, state, annotator)


def verdicts_line(deps: Deps, state: dict, annotator: str | None) -> str:
    """The annotator's verdicts in this session, exchange by exchange."""
    if state["session"] is None or not annotator:
        return ""
    names = side_names(state)
    said = {"a": f"{names['a']} better", "b": f"{names['b']} better", "tie": "a tie"}
    # each exchange's newest verdict on side A's newest reply there (under a shared history side A's
    # earlier replies are off its branch, so the exchange comes from the turn, not from the branch)
    newest = {}
    for t in deps.store.turns(state["session"]):
        if (t["id"] in state["a"] if state.get("bench") else t["lane"] == "a") and t["role"] == "assistant":
            newest[t["exchange"]] = t["id"]
    exchange = {tid: n for n, tid in newest.items()}
    mine = sorted(
        (exchange[v["turn_a"]], said.get(v["verdict"], v["verdict"]))
        for v in deps.store.verdicts(state["session"])
        if v["annotator"] == annotator and v["turn_a"] in exchange
    )
    whole = [v["verdict"] for v in deps.store.conversation_verdicts(state["session"]) if v["annotator"] == annotator]
    line = "Your verdicts: " + "; ".join(f"turn {n}: {w}" for n, w in mine) + "." if mine else ""
    if whole:
        line += f" On the whole conversation: {said[whole[-1]]}."
    return line.strip()


def sessions(deps: Deps, user: str | None = None, limit: int = 200) -> list[tuple[str, str]]:
    """(label, id) of compare and blind sessions, newest first, for the resume list. A blind session
    not yet closed is listed as A vs B: the list gives nothing away either."""
    out = []
    for s in deps.store.sessions(limit=limit, annotator=user):
        if s["mode"] not in ("compare", "blind"):
            continue
        lanes = (s["meta"] or {}).get("lanes") or {}
        who = "A vs B (blind)" if s["mode"] == "blind" and not s["closed"] else f"{lanes.get('a')} vs {lanes.get('b')}"
        study_ = f"study {s['study']} · " if s.get("study") else ""
        out.append((listed(s, f"{study_}{who} · {s['rated']} rated", 50), s["id"]))
    for run in deps.store.bench_runs():  # a benchmark's answers, pair by pair and turn by turn (anyone's)
        for x in bench.exchanges(deps.store, run)[:limit]:
            out.append(
                (
                    f"bench {run} · question {x.question_id} · {x.a.checkpoint} vs {x.b.checkpoint} · turn {x.turn}",
                    x.key,
                )
            )
    return out


def resume(deps: Deps, session_id: str, annotator: str | None) -> tuple[dict, View, View]:
    """A compare or blind session where it left off: both lanes' newest branches, the annotator's
    ratings; a blind one stays blind until it is closed. A benchmark's exchange (`bench.Exchange.key`):
    the two checkpoints' answers up to that turn, to rate and give a verdict on (they take no more messages)."""
    if session_id.startswith("bench|"):
        x = bench.exchange(deps.store, session_id)
        state = {**blank(), "session": x.a.session, "names": {"a": x.a.checkpoint, "b": x.b.checkpoint}}
        state.update(closed=True, bench=True)
        for lane, ans in (("a", x.a), ("b", x.b)):
            state[lane] = view(deps.store, ans.replies[x.turn - 1]["id"], annotator).ids
        return (state, *views(deps, state, annotator))
    s = deps.store.session(session_id)
    if s["mode"] not in ("compare", "blind"):
        raise ValueError("That is not a compare session: resume it in the Chat tab.")
    if deps.auth and s["annotator"] != annotator:
        raise ValueError("That session belongs to another user.")
    state = {
        **blank(),
        "session": session_id,
        "names": (s["meta"] or {}).get("lanes"),
        "blind": s["mode"] == "blind",
        "closed": bool(s["closed"]),
        "study": s.get("study"),
        "slot": s.get("slot"),
        "history": (s["meta"] or {}).get("history") or "own",
        "rule": (s["meta"] or {}).get("rule") or "verdict",
    }
    for lane in LANES:
        state[lane] = view(deps.store, deps.store.latest_turn(session_id, lane), annotator).ids
    return (state, *views(deps, state, annotator))


def close(deps: Deps, state: dict) -> tuple[dict, str]:
    """Close the session; in blind mode this is when the names are revealed."""
    if state["session"] is None:
        return state, "Nothing to close yet."
    if state.get("study"):
        st = deps.store.study(state["study"])
        conv, _, _ = study.conversation_at(
            deps.store, st, deps.store.session(state["session"])["annotator"], state["slot"]
        )
        if conv.session == state["session"] and not conv.reached(st["turns"]):
            raise ValueError(
                f"This study conversation has not reached its {st['turns']} turns yet: close it once it has "
                "(a closed conversation takes no more messages)."
            )
    deps.store.close_session(state["session"])
    state = {**state, "closed": True}
    names = state["names"]
    if state["blind"]:
        return state, f"Closed. **A was {names['a']}**, **B was {names['b']}**."
    return state, f"Closed: left {names['a']}, right {names['b']}."


def coverage(deps: Deps, set_name: str, prompts: list[dict[str, str]]) -> tuple[list[str], list[list]]:
    """For each prompt of the set, how many sessions each checkpoint has answered it in."""
    seen = deps.store.prompt_coverage(set_name)
    names = deps.names
    table = [[p["id"], p["prompt"][:80]] + [seen.get((p["id"], n), 0) for n in names] for p in prompts]
    return ["id", "prompt", *names], table


def study_next(deps: Deps, study_name: str | None, annotator: str | None) -> tuple[dict, str | None]:
    """The annotator's next conversation of a study: (state, opening prompt to send); or the started
    conversation's state, with its next scripted user turn when the prompt set has one and both sides
    answered the last (None: resume it as it is); ValueError when the walk is done or cannot go on."""
    if not study_name:
        raise ValueError("Pick a study first (or create one in the Study tab).")
    st = deps.store.study(study_name)
    who = study.check_annotator(st, annotator)
    conv = study.next_conversation(deps.store, st, who)
    if conv is None:
        raise study.WalkDone(study.status_line(st, None).replace("**", ""))
    if conv.session is not None:
        answered = all(n == conv.exchanges for n, _ in conv.lanes.values())
        scripted = conv.slot.scripted(conv.exchanges + 1) if answered and not conv.reached(st["turns"]) else None
        return resume(deps, conv.session, who)[0], scripted
    missing = [c for c in conv.slot.sides.values() if c not in deps.checkpoints]
    if missing:
        raise ValueError(
            f"study {st['name']} needs {', '.join(missing)}, which this app does not serve; "
            f"it serves {', '.join(deps.names)}"
        )
    state = {
        **blank(),
        "names": dict(conv.slot.sides),
        "blind": st["blind"],
        "study": st["name"],
        "slot": conv.slot.index,
        "origin": {"set": st["prompt_set"], "id": conv.slot.prompt_id, "text": conv.slot.prompt},
        "history": conv.slot.history,
        "rule": st["history_rule"],
    }
    return state, conv.slot.prompt


def study_line(deps: Deps, state: dict, annotator: str | None) -> str:
    """Where the annotator stands in the study of the shown conversation (outside a study: its history
    condition, when shared)."""
    if not state.get("study") or not annotator:
        return history_line(state)
    st = deps.store.study(state["study"])
    return study.status_line(st, *study.conversation_at(deps.store, st, annotator, state["slot"]))
