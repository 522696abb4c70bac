"""How a handler's outcome reaches the page: bad input as one line, anything else logged."""

from __future__ import annotations

import asyncio

import gradio as gr

from limachat.demo.answer import Deps
from limachat.demo.history import View
from limachat.logs import internal


def _user(fn):
    """Run a sync handler. Its ValueError (bad input) becomes a one-line message in the page; anything
    else is logged with its traceback and the page says where."""
    try:
        return fn()
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # noqa: BLE001 - the app keeps running; the log keeps the traceback
        raise gr.Error(internal(e, "the app"), print_exception=False) from None


async def _stream(gen):
    try:
        async for item in gen:
            yield item
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # noqa: BLE001
        raise gr.Error(internal(e, "the app"), print_exception=False) from None


def _shown(v: View, label: str | None = None) -> dict:
    update = {"value": v.history, "feedback_value": v.feedback}
    return gr.update(**update, **({"label": label} if label else {}))


async def _settle(deps: Deps, ids: list[str], timeout: float = 3.0) -> None:
    """After a stop, wait (briefly) until the cancelled reply has written its final status."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end and "streaming" in (await deps.store.aio.statuses(ids)).values():
        await asyncio.sleep(0.05)
