"""Hand token events from the engine's thread to the event loop with as few wake-ups as possible.

An engine step produces one token for every running request; waking the loop once per token
(``call_soon_threadsafe`` per event: a lock, a self-pipe write, a loop iteration) costs more than
the work it carries when many streams run. Events are buffered under a lock and drained by one
scheduled callback, so a step's worth of events arrives with one wake-up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class LoopBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[Any], None], Any]] = []
        self._scheduled = False
        self.wakeups = 0  # loop callbacks scheduled (tests and profiling)

    def post(self, deliver: Callable[[Any], None], item: Any) -> None:
        """Call ``deliver(item)`` on the loop, soon; safe from any thread."""
        with self._lock:
            self._pending.append((deliver, item))
            if self._scheduled:
                return
            self._scheduled = True
            self.wakeups += 1
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._scheduled = False
        for deliver, item in batch:
            deliver(item)



class TokenFeed:
    """The token events of one streamed generation, on the event loop: the bridge pushes them, one
    reader takes everything waiting at once.

    A list and at most one future per wait: an ``asyncio.Queue`` costs a future wake-up per item
    and ``asyncio.wait_for`` a task and a timer per wait, which at hundreds of streams was the
    larger part of the server's own CPU per token. The deadline is one timer per generation
    (:meth:`expire`), not one per wait."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[Any] = []
        self._closed = False
        self._expired = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    def close(self, _: object = None) -> None:
        """No more items (the generation settled); what is waiting is still taken."""
        self._closed = True
        self._wake()

    def expire(self) -> None:
        """The deadline passed: the next :meth:`take` raises ``TimeoutError``."""
        self._expired = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def take(self) -> tuple[list[Any], bool]:
        """``(every item waiting, closed)``, waiting while there is none and the feed is open."""
        while True:
            if self._expired:
                raise TimeoutError
            if self._items or self._closed:
                items, self._items = self._items, []
                return items, self._closed
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
