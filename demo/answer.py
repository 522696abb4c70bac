"""What every tab shares: the app's dependencies and one streamed, stored reply.

The data walk of a turn: the user turn is saved before any model call; the reply streams from the
checkpoint's endpoint, its partial text is saved as it grows, and the turn is finished with its
status (ok, error, stopped), token counts and timings, whatever happens: a failing endpoint, a
broken stream, or the user pressing stop (the task is cancelled and the `finally` still writes).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from limachat.dialogues.store import Store
from limachat.serve.fluency import fluency
from limachat.serve.server import BASE_NAME
from limachat.serve.checkpoints import Checkpoint
from limachat.serve.client import ChatClient, ClientError, Completion, ContextTooLong
from limachat.settings import Settings

SAVE_EVERY = 0.5  # seconds between saves of a growing reply
FLUENCY_TIMEOUT = 10.0
log = logging.getLogger(__name__)


@dataclass
class Deps:
    """Everything a handler needs, passed in (no module globals)."""

    store: Store
    checkpoints: dict[str, Checkpoint]
    settings: Settings
    clients: dict[str, ChatClient] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)  # background work (training), by name
    auth: bool = False  # users log in; ratings carry their user name
    fluency_url: str | None = None  # the local vLLM server that scores replies' fluency with `base`
    background: set = field(default_factory=set)  # fluency scoring still running (asyncio tasks)
    rng: random.Random = field(default_factory=random.Random)  # the blind side draw (seeded in tests)

    def __post_init__(self):
        for name, ck in self.checkpoints.items():
            self.clients.setdefault(name, ChatClient(ck))

    def add_checkpoint(self, ck: Checkpoint) -> None:
        self.checkpoints[ck.name] = ck
        self.clients[ck.name] = ChatClient(ck)

    @property
    def names(self) -> list[str]:
        return list(self.checkpoints)


@dataclass
class Reply:
    turn_id: str
    text: str
    status: str  # streaming | ok | error | stopped
    error: str | None = None  # what went wrong, naming no checkpoint, model or endpoint
    dropped: int = 0  # oldest exchanges left out to fit the context window
    detail: str | None = None  # the error's whole text (may name the model and endpoint)


def _drop_oldest(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The messages without their oldest exchange (a system message stays), or None when only the
    last question is left."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(head):]
    return head + body[2:] if len(body) > 2 else None


async def answer(deps: Deps, session_id: str, user_turn: str, checkpoint: str, lane: str | None = None) -> AsyncIterator[Reply]:
    """Stream `checkpoint`'s reply to the branch ending at `user_turn`, storing it as it grows.
    Yields a Reply per piece of text, then the finished one. Every store call is awaited on the
    store's writer thread or reader pool: a slow write never stalls another user's stream."""
    if checkpoint not in deps.checkpoints:
        raise ValueError(f"unknown checkpoint {checkpoint!r}; known: {', '.join(deps.names)}")
    ck, client, store = deps.checkpoints[checkpoint], deps.clients[checkpoint], deps.store.aio
    preset, wanted = deps.settings.sampling_for(checkpoint)
    params = client.sent(wanted)  # what the endpoint is sent is what the turn records
    messages = await store.messages(user_turn)
    tid = await store.begin_assistant_turn(session_id, user_turn, checkpoint=checkpoint, model=ck.model,
                                           endpoint=ck.base_url, params=params, lane=lane, preset=preset,
                                           omitted=sorted(set(wanted) - set(params)))
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
                    raise ContextTooLong(str(e), partial=e.partial, public=(
                        f"this message is too long for the context window ({deps.settings.server.max_model_len} tokens "
                        "on the local server); shorten it or lower sampling.max_tokens")) from e
                messages, dropped = shorter, dropped + 1
        status = "ok"
    except ClientError as e:
        text, status, error, detail = text or e.partial, "error", e.public, f"{checkpoint}: {e}"
        log.warning("turn %s (%s) failed: %s", tid, checkpoint, e)
    finally:  # also on cancellation (stop button, closed browser): the turn never stays "streaming"
        usage = done.usage if done else None
        await store.finish_assistant_turn(  # queued at the call: a second cancel cannot skip it
            tid, text, status=status, error=error, error_detail=detail, prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None, ttft=done.ttft if done else None,
            latency=done.latency if done else None, params={**params, "dropped_exchanges": dropped} if dropped else None)
    if status == "ok" and text and deps.fluency_url:
        # In the background: the event (and the page's send button) is done when the reply is.
        task = asyncio.create_task(_score(deps, tid, messages, text))
        deps.background.add(task)
        task.add_done_callback(deps.background.discard)
    yield Reply(tid, text, status, error, dropped, detail)


async def _score(deps: Deps, turn_id: str, messages: list[dict[str, str]], text: str) -> None:
    """Store the reply's fluency under the local base; a failure only leaves it unscored (logged)."""
    try:
        value = await fluency(deps.fluency_url, BASE_NAME, messages, text, timeout=FLUENCY_TIMEOUT)
    except (httpx.HTTPError, KeyError, ValueError, IndexError) as e:
        log.warning("fluency of turn %s not scored: %s: %s", turn_id, type(e).__name__, e)
        return
    if value is not None:
        await deps.store.aio.set_fluency(turn_id, value)


async def merged(streams: dict[str, AsyncIterator[Reply]]) -> AsyncIterator[tuple[str, Reply]]:
    """Run several replies at once; yield (key, reply) as each side produces text. Cancelling the
    consumer cancels every side (each then stores its reply as stopped)."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(key: str, stream: AsyncIterator[Reply]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((key, item))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            queue.put_nowait((key, e))
        finally:
            queue.put_nowait((key, end))

    tasks = [asyncio.create_task(pump(k, s)) for k, s in streams.items()]
    try:
        running = len(tasks)
        while running:
            key, item = await queue.get()
            if item is end:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield key, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
