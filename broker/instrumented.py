"""Broker metrics, recorded at the broker's edge by wrapping any Broker.

``conduit_broker_duration_seconds`` times the calls that do not wait for new
entries (append, append_many, info, ping, delete_idle). Reads are not timed, because a
blocking read lasts as long as the stream stays quiet. Every call that raises
BrokerUnavailable counts in ``conduit_broker_errors_total``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import TypeVar

from prometheus_client import Counter, Histogram

from broker.base import AppendManyResult, Broker, Entry, NewEntry, StreamInfo
from conduit.errors import BrokerUnavailable

__all__ = ["BROKER_DURATION", "BROKER_ERRORS", "InstrumentedBroker"]

BROKER_DURATION = Histogram(
    "conduit_broker_duration_seconds",
    "Time a broker call took, for calls that do not wait for new entries",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BROKER_ERRORS = Counter(
    "conduit_broker_errors_total",
    "Broker calls that failed because the broker was unreachable, failing or too slow",
    ["operation"],
)

_Result = TypeVar("_Result")


class InstrumentedBroker(Broker):
    """Broker that forwards every call to ``inner`` and records its duration and failures."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self._durations = {
            operation: BROKER_DURATION.labels(operation)
            for operation in ("append", "append_many", "info", "ping", "delete_idle")
        }
        self._errors = {
            operation: BROKER_ERRORS.labels(operation)
            for operation in ("append", "append_many", "read", "read_many", "info", "ping", "delete_idle")
        }

    async def append(
        self, stream: str, data: bytes, *, end: bool, message_id: str | None = None
    ) -> str:
        return await self._timed("append", self.inner.append(stream, data, end=end, message_id=message_id))

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
        started = time.perf_counter()
        try:
            return await self._counted(operation, call)
        finally:
            self._durations[operation].observe(time.perf_counter() - started)

    async def _counted(self, operation: str, call: Awaitable[_Result]) -> _Result:
        try:
            return await call
        except BrokerUnavailable:
            self._errors[operation].inc()
            raise
