"""One shared timer that cancels the ``Broker.append_nowait`` futures still pending at their deadline.

A timer per publish (``call_later`` and its cancel) costs about 2 µs on
uvloop 0.23 and on asyncio (Python 3.11, 2-CPU VM), a sizeable share of a
fast-path publish. Every future here gets the same timeout, so deadlines
arrive in the order the futures do, and one queue with one timer serves all.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["AppendDeadlines"]

_SWEEPS_PER_TIMEOUT = 10
"""Sweeps per timeout while futures are queued: each sweep drops the settled ones at the front."""


class AppendDeadlines:
    """Cancel each watched future that has not settled ``timeout_s`` after ``watch``.

    A future is cancelled by the first sweep after its deadline, and sweeps
    come every ``timeout_s / _SWEEPS_PER_TIMEOUT`` while the queue is not
    empty. A settled future stays queued until the next sweep reaches it,
    so the queue contains about that long's worth of publishes, and longer
    behind a future that is still pending.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._sweep_interval_s = timeout_s / _SWEEPS_PER_TIMEOUT
        # (deadline in loop time, future), oldest first.
        self._queue: deque[tuple[float, asyncio.Future[str]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def watch(self, future: asyncio.Future[str]) -> None:
        loop = future.get_loop()
        if self._timer_loop is not loop:
            # A timer left on a loop that has closed would never fire.
            self._queue.clear()
            self._timer = None
            self._timer_loop = loop
        self._queue.append((loop.time() + self._timeout_s, future))
        if self._timer is None:
            self._timer = loop.call_later(self._sweep_interval_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        queue = self._queue
        while queue:
            deadline, future = queue[0]
            if not future.done():
                if deadline > now:
                    break
                future.cancel()
            queue.popleft()
        if queue:
            self._timer = loop.call_later(self._sweep_interval_s, self._sweep, loop)
