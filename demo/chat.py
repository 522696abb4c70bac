"""Chat tab handlers: plain functions of (inputs, deps), no Gradio objects.

The browser keeps `state = {"session": id | None, "ids": [turn id of each shown message]}`; every
handler returns the new state and the `View` to show.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from limachat.demo.answer import Deps, answer
from limachat.demo.history import NAME_FIRST, View, label_of, latest_leaf, view


def blank() -> dict:
    return {"session": None, "ids": []}


def current(deps: Deps, state: dict, annotator: str | None) -> View:
    return view(deps.store, state["ids"][-1] if state["ids"] else None, annotator)


async def _reply(deps: Deps, session_id: str, user_turn: str, checkpoint: str, annotator: str | None
                 ) -> AsyncIterator[tuple[dict, View]]:
    asked = view(deps.store, user_turn, annotator)
    async for r in answer(deps, session_id, user_turn, checkpoint):
        v = asked.growing(r, checkpoint)
        yield {"session": session_id, "ids": v.ids}, v
    final = view(deps.store, r.turn_id, annotator)
    yield {"session": session_id, "ids": final.ids}, final


async def send(deps: Deps, state: dict, text: str, checkpoint: str, annotator: str | None = None
               ) -> AsyncIterator[tuple[dict, View]]:
    """A new user turn after the last shown message, then the checkpoint's streamed reply."""
    if not (text or "").strip():  # empty input does nothing
        yield state, current(deps, state, annotator)
        return
    sid = state["session"] or deps.store.start_session("chat", annotator=annotator or None)
    user_turn = deps.store.add_user_turn(sid, text, parent_id=state["ids"][-1] if state["ids"] else None)
    async for out in _reply(deps, sid, user_turn, checkpoint, annotator):
        yield out


async def regenerate(deps: Deps, state: dict, index: int, checkpoint: str, annotator: str | None = None
                     ) -> AsyncIterator[tuple[dict, View]]:
    """A new reply to the question of message `index`, as a sibling: the old reply stays stored."""
    turn = deps.store.turn(current(deps, state, annotator).turn_at(index))
    user_turn = turn["parent_id"] if turn["role"] == "assistant" else turn["id"]
    async for out in _reply(deps, state["session"], user_turn, checkpoint, annotator):
        yield out


async def edit(deps: Deps, state: dict, index: int, text: str, checkpoint: str, annotator: str | None = None
               ) -> AsyncIterator[tuple[dict, View]]:
    """Editing a user message starts a new branch from there (and asks for a reply); editing an
    assistant message stores a gold correction beside the original."""
    turn = deps.store.turn(current(deps, state, annotator).turn_at(index))
    if not (text or "").strip() or text == turn["content"]:
        yield state, current(deps, state, annotator)
        return
    if turn["role"] == "assistant":
        if not annotator:
            raise ValueError(NAME_FIRST)
        deps.store.edit(turn["id"], annotator, text)
        yield state, current(deps, state, annotator)
        return
    user_turn = deps.store.add_user_turn(state["session"], text, parent_id=turn["parent_id"])
    async for out in _reply(deps, state["session"], user_turn, checkpoint, annotator):
        yield out


def rate(deps: Deps, state: dict, index: int, option: str | bool | None, annotator: str | None) -> View:
    """One click: the annotator's fail / pass / excellent for the assistant message `index`."""
    label = label_of(option, annotator)
    if label is not None:
        deps.store.rate(current(deps, state, annotator).turn_at(index), annotator, label)
    return current(deps, state, annotator)


def sessions(deps: Deps, modes: tuple[str, ...] = ("chat", "imported"), limit: int = 200) -> list[tuple[str, str]]:
    """(label, id) of earlier sessions, newest first, for the resume list."""
    out = []
    for s in deps.store.sessions(limit=limit):
        if s["mode"] in modes:
            first = " ".join((s["first_prompt"] or "(empty)").split())
            first = first if len(first) <= 60 else first[:57] + "..."
            out.append((f"{s['created'][:16].replace('T', ' ')} · {s['turns']} turns, {s['rated']} rated · {first}", s["id"]))
    return out


def resume(deps: Deps, session_id: str, annotator: str | None) -> tuple[dict, View]:
    """An earlier session where it left off (its newest branch), with the annotator's ratings."""
    deps.store.session(session_id)
    v = view(deps.store, latest_leaf(deps.store, session_id), annotator)
    return {"session": session_id, "ids": v.ids}, v
