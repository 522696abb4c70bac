"""What every tab shares: the app's dependencies and one streamed, stored reply (limachat/replies.py,
the one way a reply is asked and stored), scored for fluency in the background once it is done."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from limachat.dialogues.store import Store
from limachat.layout import BASE_NAME
from limachat.replies import Reply, stream_reply
from limachat.serve.checkpoints import Checkpoint
from limachat.serve.client import ChatClient
from limachat.serve.fluency import fluency
from limachat.settings import Settings

FLUENCY_TIMEOUT = 10.0
log = logging.getLogger(__name__)
__all__ = ["Deps", "Reply", "answer", "merged"]


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


async def answer(
    deps: Deps, session_id: str, user_turn: str, checkpoint: str, lane: str | None = None
) -> AsyncIterator[Reply]:
    """Stream `checkpoint`'s reply to the branch ending at `user_turn`, storing it as it grows, at the
    checkpoint's sampling. Yields a Reply per piece of text, then the finished one."""
    if checkpoint not in deps.checkpoints:
        raise ValueError(f"unknown checkpoint {checkpoint!r}; known: {', '.join(deps.names)}")
    preset, wanted = deps.settings.sampling_for(checkpoint)
    async for reply in stream_reply(
        deps.store.aio,
        deps.clients[checkpoint],
        session_id,
        user_turn,
        checkpoint=checkpoint,
        preset=preset,
        wanted=wanted,
        lane=lane,
        context_window=deps.settings.server.max_model_len,
    ):
        if reply.status == "ok" and reply.text and deps.fluency_url:
            # In the background: the event (and the page's send button) is done when the reply is.
            task = asyncio.create_task(_score(deps, reply.turn_id, reply.asked, reply.text))
            deps.background.add(task)
            task.add_done_callback(deps.background.discard)
        yield reply


async def _score(deps: Deps, turn_id: str, messages: list[dict[str, str]], text: str) -> None:
    """Store the reply's fluency under the local base; a failure only leaves it unscored (logged)."""
    try:
        value = await fluency(
            deps.fluency_url, BASE_NAME, messages, text, timeout=FLUENCY_TIMEOUT, headers=deps.settings.local_headers
        )
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
