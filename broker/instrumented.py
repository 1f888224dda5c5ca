"""Broker metrics, recorded at the broker's edge by wrapping any Broker.

``conduit_broker_duration_seconds`` times the calls that do not wait for new
entries (append, append_many, info, ping, delete_idle). Reads are not timed, because a
blocking read lasts as long as the stream stays quiet. Every call that raises
BrokerUnavailable counts in ``conduit_broker_errors_total``. The numbers live
in ``broker/broker_metrics.py``, which hands them to prometheus_client at scrape time.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Mapping, Sequence
from time import perf_counter
from typing import TypeVar

from broker.base import AppendManyResult, Broker, Entry, NewEntry, StreamInfo
from broker.broker_metrics import BROKER_METRICS, BrokerMetrics
from conduit.errors import BrokerUnavailable

__all__ = ["InstrumentedBroker"]

_Result = TypeVar("_Result")


class InstrumentedBroker(Broker):
    """Broker that forwards every call to ``inner`` and records its duration and failures."""

    def __init__(self, inner: Broker, metrics: BrokerMetrics = BROKER_METRICS) -> None:
        self.inner = inner
        self._durations = {
            operation: metrics.duration(operation)
            for operation in ("append", "append_many", "info", "ping", "delete_idle")
        }
        self._errors = {
            operation: metrics.errors(operation)
            for operation in ("append", "append_many", "read", "read_many", "info", "ping", "delete_idle")
        }
        self._append_duration = self._durations["append"]
        self._append_errors = self._errors["append"]

    async def append(
        self, stream: str, data: bytes, *, end: bool, message_id: str | None = None
    ) -> str:
        # The publish path: inlined rather than through _timed, which would add a coroutine per call.
        started = perf_counter()
        try:
            return await self.inner.append(stream, data, end=end, message_id=message_id)
        except BrokerUnavailable:
            self._append_errors.count += 1
            raise
        finally:
            self._append_duration.observe(perf_counter() - started)

    def append_nowait(self, stream: str, data: bytes, *, message_id: str | None = None) -> asyncio.Future[str] | None:
        started = perf_counter()
        try:
            future = self.inner.append_nowait(stream, data, message_id=message_id)
        except BrokerUnavailable:
            # ``append`` counts a closed broker as an error too, so both paths report it alike.
            self._append_errors.count += 1
            self._append_duration.observe(perf_counter() - started)
            raise
        if future is not None:
            future.add_done_callback(functools.partial(self._record_append, started))
        return future

    def _record_append(self, started: float, future: asyncio.Future[str]) -> None:
        # The duration ends when the loop runs this callback, a loop pass after the reply at most.
        self._append_duration.observe(perf_counter() - started)
        if not future.cancelled() and isinstance(future.exception(), BrokerUnavailable):
            self._append_errors.count += 1

    async def append_many(self, stream: str, entries: Sequence[NewEntry]) -> AppendManyResult:
        return await self._timed("append_many", self.inner.append_many(stream, entries))

    async def read(self, stream: str, after_id: str, *, count: int, block_ms: int) -> list[Entry]:
        return await self._counted("read", self.inner.read(stream, after_id, count=count, block_ms=block_ms))

    async def read_many(
        self, positions: Mapping[str, str], *, count: int, block_ms: int
    ) -> dict[str, list[Entry]]:
        return await self._counted(
            "read_many", self.inner.read_many(positions, count=count, block_ms=block_ms)
        )

    def read_group(self, stream: str) -> str:
        return self.inner.read_group(stream)

    async def info(self, stream: str) -> StreamInfo | None:
        return await self._timed("info", self.inner.info(stream))

    async def delete_idle(self, idle_s: float, *, now_s: float | None = None) -> list[str]:
        return await self._timed("delete_idle", self.inner.delete_idle(idle_s, now_s=now_s))

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def close(self) -> None:
        await self.inner.close()

    async def _timed(self, operation: str, call: Awaitable[_Result]) -> _Result:
        started = perf_counter()
        try:
            return await self._counted(operation, call)
        finally:
            self._durations[operation].observe(perf_counter() - started)

    async def _counted(self, operation: str, call: Awaitable[_Result]) -> _Result:
        try:
            return await call
        except BrokerUnavailable:
            self._errors[operation].count += 1
            raise
