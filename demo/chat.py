"""Chat tab handlers: plain functions of (inputs, deps), no Gradio objects.

The browser keeps `state = {"session": id | None, "ids": [turn id of each shown message]}`; every
handler returns the new state and the `View` to show.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from limachat.demo.answer import Deps, answer
from limachat.demo.history import NAME_FIRST, View, check_message, label_of, listed, unmark, view


def blank() -> dict:
    return {"session": None, "ids": []}


def current(deps: Deps, state: dict, annotator: str | None) -> View:
    return view(deps.store, state["ids"][-1] if state["ids"] else None, annotator)


async def _view(deps: Deps, leaf: str | None, annotator: str | None) -> View:
    """`view` on the store's reader pool (async handlers run no SQLite call on the event loop)."""
    return await deps.store.aio.read(view, deps.store, leaf, annotator)


async def _reply(
    deps: Deps, session_id: str, user_turn: str, checkpoint: str, annotator: str | None
) -> AsyncIterator[tuple[dict, View]]:
    asked = await _view(deps, user_turn, annotator)
    async for r in answer(deps, session_id, user_turn, checkpoint):
        v = asked.growing(r, checkpoint)
        yield {"session": session_id, "ids": v.ids}, v
    final = await _view(deps, r.turn_id, annotator)
    yield {"session": session_id, "ids": final.ids}, final


async def send(
    deps: Deps, state: dict, text: str, checkpoint: str, annotator: str | None = None
) -> AsyncIterator[tuple[dict, View]]:
    """A new user turn after the last shown message, then the checkpoint's streamed reply."""
    if not (text or "").strip():  # empty input does nothing
        yield state, await _view(deps, state["ids"][-1] if state["ids"] else None, annotator)
        return
    check_message(text)
    store = deps.store.aio
    sid = state["session"] or await store.start_session("chat", annotator=annotator or None)
    user_turn = await store.add_user_turn(sid, text, parent_id=state["ids"][-1] if state["ids"] else None)
    async for out in _reply(deps, sid, user_turn, checkpoint, annotator):
        yield out


async def regenerate(
    deps: Deps, state: dict, index: int, checkpoint: str, annotator: str | None = None
) -> AsyncIterator[tuple[dict, View]]:
    """A new reply to the question of message `index`, as a sibling: the old reply stays stored."""
    shown = await _view(deps, state["ids"][-1] if state["ids"] else None, annotator)
    turn = await deps.store.aio.turn(shown.turn_at(index))
    user_turn = turn["parent_id"] if turn["role"] == "assistant" else turn["id"]
    async for out in _reply(deps, state["session"], user_turn, checkpoint, annotator):
        yield out


async def edit(
    deps: Deps, state: dict, index: int, text: str, checkpoint: str, annotator: str | None = None
) -> AsyncIterator[tuple[dict, View]]:
    """Editing a user message starts a new branch from there (and asks for a reply); editing an
    assistant message stores a gold correction beside the original."""
    leaf = state["ids"][-1] if state["ids"] else None
    turn = await deps.store.aio.turn((await _view(deps, leaf, annotator)).turn_at(index))
    if not (text or "").strip() or text == turn["content"]:
        yield state, await _view(deps, leaf, annotator)
        return
    if turn["role"] == "assistant":
        text = unmark(text)
        if text == turn["content"]:
            yield state, await _view(deps, leaf, annotator)
            return
    check_message(text)
    if turn["role"] == "assistant":
        if not annotator:
            raise ValueError(NAME_FIRST)
        await deps.store.aio.edit(turn["id"], annotator, text)
        yield state, await _view(deps, leaf, annotator)
        return
    user_turn = await deps.store.aio.add_user_turn(state["session"], text, parent_id=turn["parent_id"])
    async for out in _reply(deps, state["session"], user_turn, checkpoint, annotator):
        yield out


def rate(deps: Deps, state: dict, index: int, option: str | bool | None, annotator: str | None) -> View:
    """One click: the annotator's fail / pass / excellent for the assistant message `index`."""
    label = label_of(option, annotator)
    if label is not None:
        deps.store.rate(current(deps, state, annotator).turn_at(index), annotator, label)
    return current(deps, state, annotator)


def sessions(
    deps: Deps, modes: tuple[str, ...] = ("chat", "imported"), limit: int = 200, user: str | None = None
) -> list[tuple[str, str]]:
    """(label, id) of earlier sessions, newest first, for the resume list; with logins (`user`), only
    that user's own."""
    out = []
    for s in deps.store.sessions(limit=limit, annotator=user):
        if s["mode"] in modes:
            out.append((listed(s, f"{s['turns']} turns, {s['rated']} rated"), s["id"]))
    return out


def resume(deps: Deps, session_id: str, annotator: str | None) -> tuple[dict, View]:
    """An earlier session where it left off (its newest branch), with the annotator's ratings."""
    session = deps.store.session(session_id)
    if deps.auth and session["annotator"] != annotator:
        raise ValueError("That session belongs to another user.")
    v = view(deps.store, deps.store.latest_turn(session_id), annotator)
    return {"session": session_id, "ids": v.ids}, v
