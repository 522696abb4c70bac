"""How a Store method runs on the writer thread (see `limachat.dialogues.store`)."""

from __future__ import annotations

import asyncio
import functools
import threading


def _not_on_loop() -> None:
    """Refuse to block an event loop on SQLite (or on the writer): async code uses `store.aio`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError("a SQLite call on the event loop: use `await store.aio.<method>(...)`")


def writes(method):
    """The method's body runs on the store's writer thread, inside a group-committed transaction."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if threading.current_thread() is self._writer:
            return method(self, *args, **kwargs)
        _not_on_loop()
        return self._submit(lambda: method(self, *args, **kwargs)).result()

    call.body = method
    return call
