"""How a handler's outcome reaches the page: bad input as one line, anything else logged."""

from __future__ import annotations

import asyncio

import gradio as gr

from limachat.demo.answer import Deps
from limachat.demo.history import View
from limachat.logs import internal


def _error(e: Exception) -> gr.Error:
    """What the page shows for a handler's exception: a ValueError (bad input) as its one line; anything
    else logged with its traceback, and the page says where."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, ValueError):
        return gr.Error(str(e), print_exception=False)
    return gr.Error(internal(e, "the app"), print_exception=False)


def _user(fn):
    """Run a sync handler; its exceptions reach the page as `_error` says."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the app keeps running; the log keeps the traceback
        raise _error(e) from None


PAGE_EVERY = 0.1  # seconds: a streaming reply reaches the page at most 10 times a second


async def _stream(gen):
    """A handler's updates on their way to the page: the first at once, then at most one per PAGE_EVERY (the
    newest; each is a whole view), and always the last. Every update is the whole history, which Gradio
    diffs and sends and the browser renders again; at a GPU's 60 tokens a second per stream, one per token
    took the app's one core at 32 annotators (make soak). Where vLLM shares the cores with the app and the
    browser (a laptop, this 2-core machine), the page's work is taken from vLLM's decode: at 20 updates a
    second a reply reached the page at half vLLM's speed, at 10 a second it gained a quarter
    (BENCHMARKS.md, "App")."""
    loop = asyncio.get_running_loop()
    sent, held = -PAGE_EVERY, None
    try:
        async for item in gen:
            if loop.time() - sent >= PAGE_EVERY:
                held, sent = None, loop.time()
                yield item
            else:
                held = item
        if held is not None:
            yield held
    except Exception as e:  # noqa: BLE001 - as in _user: one line on the page, the traceback in the log
        raise _error(e) from None


def _shown(v: View, label: str | None = None) -> dict:
    update = {"value": v.history, "feedback_value": v.feedback}
    return gr.update(**update, **({"label": label} if label else {}))


async def _settle(deps: Deps, ids: list[str], timeout: float = 3.0) -> None:
    """After a stop, wait (briefly) until the cancelled reply has written its final status."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end and "streaming" in (await deps.store.aio.statuses(ids)).values():
        await asyncio.sleep(0.05)
