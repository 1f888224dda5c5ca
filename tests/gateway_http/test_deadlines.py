"""Deadlines: one timer for the deadlines of many holders."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway_http.deadlines import Deadlines


class _Holder:
    def __init__(self) -> None:
        self.passed = asyncio.Event()
        self.calls = 0

    def deadline_passed(self) -> None:
        self.calls += 1
        self.passed.set()


async def test_deadlines_call_each_holder_once() -> None:
    deadlines = Deadlines(min_gap_s=0.01)
    holders = [_Holder() for _ in range(3)]
    for index, holder in enumerate(holders):
        deadlines.set(holder, time.monotonic() + 0.02 * (index + 1))

    async with asyncio.timeout(5):
        for holder in holders:
            await holder.passed.wait()

    assert [holder.calls for holder in holders] == [1, 1, 1]
    assert len(deadlines) == 0


async def test_deadlines_discarded_holder_not_called() -> None:
    deadlines = Deadlines(min_gap_s=0.01)
    discarded, sentinel = _Holder(), _Holder()
    deadlines.set(discarded, time.monotonic() + 0.01)
    deadlines.set(sentinel, time.monotonic() + 0.05)
    deadlines.discard(discarded)

    # The sentinel's deadline is later, so by the time it passes the discarded one would have too.
    async with asyncio.timeout(5):
        await sentinel.passed.wait()

    assert discarded.calls == 0
    assert sentinel.calls == 1


async def test_deadlines_earlier_deadline_rearms_timer() -> None:
    deadlines = Deadlines(min_gap_s=0.01)
    late, early = _Holder(), _Holder()
    deadlines.set(late, time.monotonic() + 60)
    deadlines.set(early, time.monotonic() + 0.02)

    async with asyncio.timeout(5):
        await early.passed.wait()

    assert late.calls == 0
    assert len(deadlines) == 1
    deadlines.close()
    assert len(deadlines) == 0


def test_deadlines_rejects_zero_gap() -> None:
    with pytest.raises(ValueError, match="min_gap_s must be above 0, got 0"):
        Deadlines(min_gap_s=0)
