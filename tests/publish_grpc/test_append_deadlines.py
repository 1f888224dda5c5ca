"""AppendDeadlines: one timer cancels the append futures still pending at their deadline."""

from __future__ import annotations

import asyncio

from publish_grpc.append_deadlines import AppendDeadlines

TIMEOUT_S = 0.05
# Guards against hangs only.
WAIT_TIMEOUT_S = 5.0


async def test_deadlines_cancel_only_pending() -> None:
    loop = asyncio.get_running_loop()
    deadlines = AppendDeadlines(TIMEOUT_S)
    settled: asyncio.Future[str] = loop.create_future()
    pending: asyncio.Future[str] = loop.create_future()
    later: asyncio.Future[str] = loop.create_future()
    deadlines.watch(settled)
    deadlines.watch(pending)
    settled.set_result("1-0")

    await asyncio.wait([pending], timeout=WAIT_TIMEOUT_S)
    deadlines.watch(later)
    later.set_result("2-0")
    await asyncio.sleep(TIMEOUT_S * 2)

    assert settled.result() == "1-0"
    assert pending.cancelled()
    assert later.result() == "2-0"
    assert len(deadlines._queue) == 0
    assert deadlines._timer is None



async def test_deadlines_survive_new_loop() -> None:
    deadlines = AppendDeadlines(TIMEOUT_S)
    other_loop = asyncio.new_event_loop()
    try:
        # A timer left behind on a loop that never runs again.
        deadlines.watch(other_loop.create_future())
    finally:
        other_loop.close()
    pending: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    deadlines.watch(pending)
    await asyncio.wait([pending], timeout=WAIT_TIMEOUT_S)

    assert pending.cancelled()
