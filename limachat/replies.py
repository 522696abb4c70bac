"""One reply asked of a checkpoint and stored as it grows: the one way every part of limachat does it
(the app's Chat and Compare, and a CITING round's replay, limachat/rounds.py).

The data walk of a turn: the user turn is saved before any model call; the assistant turn is begun with
the preset, the sampling sent and what the endpoint was not sent; the reply streams, its partial text
saved as it grows; the turn is finished with its status (ok, error, stopped), token counts and timings,
whatever happens: a failing endpoint, a broken stream, or a cancel (the stop button: the `finally`
still writes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from limachat.serve.client import ChatClient, ClientError, Completion, ContextTooLong

SAVE_EVERY = 0.5  # seconds between saves of a growing reply
log = logging.getLogger(__name__)


@dataclass
class Reply:
    turn_id: str
    text: str
    status: str  # streaming | ok | error | stopped
    error: str | None = None  # what went wrong, naming no checkpoint, model or endpoint
    dropped: int = 0  # oldest exchanges left out to fit the context window
    detail: str | None = None  # the error's whole text (may name the model and endpoint)
    asked: list[dict[str, str]] = field(default_factory=list, repr=False)  # the messages sent (after any drop)


def _drop_oldest(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The messages without their oldest exchange (a system message stays), or None when only the
    last question is left."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(head) :]
    return head + body[2:] if len(body) > 2 else None


async def stream_reply(
    store,
    client: ChatClient,
    session_id: str,
    user_turn: str,
    *,
    checkpoint: str,
    preset: str | None,
    wanted: dict[str, Any],
    context_window: int,
    lane: str | None = None,
) -> AsyncIterator[Reply]:
    """Stream `client`'s reply to the branch ending at `user_turn`, storing it as it grows (`store` is a
    Store's `aio`: every call is awaited on its writer thread or reader pool, so a slow write never stalls
    another stream). `wanted` is the sampling asked for; what the endpoint is sent is what the turn
    records, beside `preset` and the keys left out. Yields a Reply per piece of text, then the finished one."""
    ck = client.checkpoint
    params = client.sent(wanted)
    messages = await store.messages(user_turn)
    tid = await store.begin_assistant_turn(
        session_id,
        user_turn,
        checkpoint=checkpoint,
        model=ck.model,
        endpoint=ck.base_url,
        params=params,
        lane=lane,
        preset=preset,
        omitted=sorted(set(wanted) - set(params)),
    )
    text, status, error, detail, done, dropped = "", "stopped", None, None, None, 0
    saved = time.monotonic()
    try:
        while True:
            try:
                async for event in client.stream(messages, params):
                    if isinstance(event, Completion):
                        done = event
                        continue
                    text += event
                    if time.monotonic() - saved > SAVE_EVERY:
                        store.save_partial(tid, text)  # queued, not awaited: the next piece need not wait for it
                        saved = time.monotonic()
                    yield Reply(tid, text, "streaming", dropped=dropped)
                break
            except ContextTooLong as e:
                shorter = None if text else _drop_oldest(messages)
                if shorter is None:
                    raise ContextTooLong(
                        str(e),
                        partial=e.partial,
                        public=(
                            f"this message is too long for the context window ({context_window} tokens "
                            "on the local server); shorten it or lower sampling.max_tokens"
                        ),
                    ) from e
                messages, dropped = shorter, dropped + 1
        status = "ok"
    except ClientError as e:
        text, status, error, detail = text or e.partial, "error", e.public, f"{checkpoint}: {e}"
        log.warning("turn %s (%s) failed: %s", tid, checkpoint, e)
    finally:  # also on cancellation (stop button, closed browser): the turn never stays "streaming"
        usage = done.usage if done else None
        await store.finish_assistant_turn(  # queued at the call: a second cancel cannot skip it
            tid,
            text,
            status=status,
            error=error,
            error_detail=detail,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            ttft=done.ttft if done else None,
            latency=done.latency if done else None,
            params={**params, "dropped_exchanges": dropped} if dropped else None,
        )
    yield Reply(tid, text, status, error, dropped, detail, asked=messages)


async def converse(
    store,
    client,
    checkpoint: str,
    users: list[str],
    *,
    meta: dict,
    prompt_set: str | None = None,
    prompt: str | None = None,
    preset: str | None = None,
    params: dict | None = None,
    context_window: int,
) -> list[str]:
    """A conversation of `users`' turns with `checkpoint` in a fresh chat session, each reply generated live
    from the conversation so far and stored as the app stores one (its preset, the sampling sent and what
    was left out); returns the replies' turn ids, stopping at the first that failed. `store` is the
    Store's async face (`store.aio`)."""
    sid = await store.start_session("chat", prompt_set=prompt_set, prompt=prompt, meta=meta)
    parent, ids = None, []
    for text in users:
        parent = await store.add_user_turn(sid, text, parent_id=parent)
        stream = stream_reply(
            store, client, sid, parent, checkpoint=checkpoint, preset=preset, wanted=params or {},
            context_window=context_window,
        )  # fmt: skip
        reply = [r async for r in stream][-1]  # the finished reply
        if reply.status != "ok":
            break
        parent = reply.turn_id
        ids.append(parent)
    return ids
