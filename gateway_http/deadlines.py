"""One timer for the deadlines of many objects, such as every stream's send deadline.

A gateway has thousands of open streams, and a timer per stream costs both memory
(about 0.6 KB per uvloop timer, by tracemalloc) and CPU when it is armed and cancelled per
frame. ``Deadlines`` keeps one dict of deadlines and one timer. Adding or
removing a deadline is a dict operation. The timer fires at the earliest
deadline, at most once per ``min_gap_s``, calls ``deadline_passed()`` on the
objects whose deadline passed, and stops while no deadline is left.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["DeadlineHolder", "Deadlines"]

_MIN_GAP_S = 0.05


class DeadlineHolder(Protocol):
    """An object that has a deadline; hashable by identity."""

    def deadline_passed(self) -> None:
        """Called once, from the event loop, when the deadline has passed; must not block."""


class Deadlines:
    """Deadlines (``time.monotonic()`` values) of many holders, checked by one timer."""

    __slots__ = ("_due", "_min_gap_s", "_timer", "_timer_at")

    def __init__(self, min_gap_s: float = _MIN_GAP_S) -> None:
        if min_gap_s <= 0:
            raise ValueError(f"min_gap_s must be above 0, got {min_gap_s}")
        self._due: dict[DeadlineHolder, float] = {}
        self._min_gap_s = min_gap_s
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        return len(self._due)

    def set(self, holder: DeadlineHolder, at: float) -> None:
        """Call ``holder.deadline_passed()`` soon after ``at``, unless ``discard`` comes first."""
        self._due[holder] = at
        if self._timer is None or at < self._timer_at - self._min_gap_s:
            self._arm(at)

    def discard(self, holder: DeadlineHolder) -> None:
        """Forget the deadline of ``holder``; safe when it has none."""
        self._due.pop(holder, None)

    def close(self) -> None:
        """Forget every deadline and stop the timer."""
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        now = time.monotonic()
        self._timer_at = max(at, now + self._min_gap_s)
        self._timer = asyncio.get_running_loop().call_later(self._timer_at - now, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic()
        passed = [holder for holder, at in self._due.items() if at <= now]
        for holder in passed:
            del self._due[holder]
        if self._due:
            self._arm(min(self._due.values()))
        for holder in passed:
            holder.deadline_passed()
