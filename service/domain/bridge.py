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

