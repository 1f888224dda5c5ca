"""The broker interface that the publish service, the gateway and cleanup share.

Two implementations keep the same contract: ``RedisBroker`` (Redis Streams) and
``MemoryBroker`` (one process, for ``conduit dev`` and tests). The contract test
suite in tests/broker runs against both.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from conduit.errors import RateLimited

__all__ = ["AppendManyResult", "Broker", "Entry", "NewEntry", "StreamInfo"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its id (``<ms>-<seq>``) and the encoded PublishRequest."""

    id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class NewEntry:
    """One entry for ``Broker.append_many``, with the meaning that ``append`` gives its arguments."""

    data: bytes
    end: bool = False
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class AppendManyResult:
    """Outcome of ``Broker.append_many``: the ids of the entries handled, in order."""

    ids: list[str]
    """Entry id of each of the first ``len(ids)`` entries: the new one, or the original for a duplicate."""
    rate_limited: RateLimited | None = None
    """The rejection of entry ``len(ids)``, which was not appended, or None when every entry was handled."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """Size and bounds of a stream as currently stored."""

    length: int
    first_id: str | None
    last_id: str | None
    ttl_s: float | None
    """Seconds until the stream expires, or None when it has no expiry."""


class Broker(abc.ABC):
    """Append-only streams keyed by ``stream:<org_id>:<channel_id>``.

    Every method raises ``conduit.errors.BrokerUnavailable`` when the backend
    cannot be reached or times out, and never a backend-specific
    exception.
    """

    @abc.abstractmethod
    async def append(
        self, stream: str, data: bytes, *, end: bool, message_id: str | None = None
    ) -> str:
        """Append ``data`` to ``stream`` and return the new entry id.

        Order: track the stream's activity, then in one atomic step check the
        channel's fixed-window rate limit, append trimmed to about
        ``max_stream_len`` entries, and on ``end`` set the stream's expiry;
        after an ``end`` the stream leaves activity tracking. Raises
        ``RateLimited`` (nothing appended) when the window is used up.

        With a ``message_id`` and a non-zero ``dedup_window_s``, the same step
        first looks the id up on this stream: an id appended within the last
        ``dedup_window_s`` seconds returns that append's entry id, appends
        nothing, leaves the rate limit untouched and never raises RateLimited.
        ``data`` of a duplicate is not compared with the original.
        """

    @abc.abstractmethod
    async def append_many(self, stream: str, entries: Sequence[NewEntry]) -> AppendManyResult:
        """Append ``entries`` to ``stream`` in order, as ``append`` would one by one, in one atomic step.

        Each entry is deduplicated and counted against the rate limit exactly
        as by ``append``. The first entry that the rate limit rejects ends the
        call: it and every later entry are not appended, and the result names
        the ``RateLimited`` error instead of raising it. Activity tracking ends
        up as after the same ``append`` calls. Raises ValueError when
        ``entries`` is empty.
        Raises BrokerUnavailable as ``append`` does, and then the entries
        may or may not be stored.
        """

    def append_nowait(self, stream: str, data: bytes, *, message_id: str | None = None) -> asyncio.Future[str] | None:
        """Start appending a non-END entry without awaiting, and return a future of its entry id or None.

        The future resolves as ``await append(stream, data, end=False,
        message_id=message_id)`` would and raises what it would raise. It
        saves a coroutine and a task per publish on the hot path. None means
        that this broker cannot start the append in one step this time,
        because the stream needs tracking first or the broker sends each
        command on its own, so the caller awaits ``append`` instead. The
        default returns None. Raises BrokerUnavailable at once after ``close()``.
        """
        return None

    @abc.abstractmethod
    async def read(self, stream: str, after_id: str, *, count: int, block_ms: int) -> list[Entry]:
        """Return up to ``count`` entries with ids greater than ``after_id``, oldest first.

        ``after_id`` is ``"0-0"`` for the start of the stream, and a bare
        ``<ms>`` means ``<ms>-0``. When there are none, wait up to ``block_ms``
        for one and return an empty list on time-out. ``block_ms=0`` returns at
        once. An implementation may end a long wait sooner with an empty list,
        so callers read in a loop. A stream that does not exist yet reads as
        empty. Raises InvalidArgument for a malformed ``after_id`` and
        ValueError for ``count < 1`` or ``block_ms < 0``. A read waiting when
        ``close()`` is called raises BrokerUnavailable.
        """

    @abc.abstractmethod
    async def read_many(
        self, positions: Mapping[str, str], *, count: int, block_ms: int
    ) -> dict[str, list[Entry]]:
        """Read several streams in one call: up to ``count`` entries of each after its position.

        ``positions`` maps stream keys to ids as ``read`` takes them and must
        not be empty. The result holds only the streams that have entries,
        each oldest first. Waits and raises as ``read`` does, and all streams
        must share one ``read_group``.
        """

    def read_group(self, stream: str) -> str:
        """Return the group of ``stream``: streams of one group may share a ``read_many`` call.

        On Redis Cluster the group is the stream's hash slot, because one XREAD
        cannot span slots. Elsewhere every stream is in the same group.
        """
        return ""

    @abc.abstractmethod
    async def info(self, stream: str) -> StreamInfo | None:
        """Return the stream's length, first and last ids and expiry, or None when it does not exist."""

    @abc.abstractmethod
    async def delete_idle(self, idle_s: float, *, now_s: float | None = None) -> list[str]:
        """Delete tracked streams whose newest entry is older than ``idle_s`` and untrack them.

        ``now_s`` is the Unix time to measure idleness from. By default, the
        Redis broker measures it by Redis's own clock, which stamps the entry ids.
        A stream that received an entry after the sweep began is kept, and a
        tracked stream that no longer exists is untracked. Returns the keys deleted.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the backend responds to a ping; raise BrokerUnavailable otherwise."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and wake waiting readers; later calls raise BrokerUnavailable."""
