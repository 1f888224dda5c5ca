"""The embedded broker: the Broker contract in one process's memory, for ``conduit dev`` and tests.

It mirrors the Redis layout so that both behave alike. Entry ids ``<ms>-<seq>``
increase strictly as Redis's do, and each stream keeps its newest
``max_stream_len`` entries. The same fixed-window rate limit applies per
stream. END sets an expiry and untracks the stream, and activity tracking
records the last publish second. Nothing is shared between processes.

Memory stays bounded: a stream keeps at most ``max_stream_len`` entries, rate
windows and remembered message_ids are dropped as their windows end, and waiter
records are dropped when their last reader leaves. Only the number of streams
grows with use, and END expiry plus ``delete_idle`` bound it.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from broker.base import AppendManyResult, Broker, Entry, NewEntry, StreamInfo
from broker.errors import broker_closed, rate_limited
from broker.ids import check_read_request, format_entry_id
from conduit.errors import RateLimited
from conduit.settings import BrokerSettings

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _StoredEntry:
    ms: int
    seq: int
    entry: Entry


@dataclass(slots=True)
class _Stream:
    entries: deque[_StoredEntry]
    last_ms: int = 0
    last_seq: int = 0
    expires_at: float | None = None
    """``time.monotonic()`` value at which the stream disappears, or None."""


@dataclass(slots=True)
class _Window:
    ends_at: float
    """``time.monotonic()`` value at which the window closes."""
    count: int = 0


@dataclass(frozen=True, slots=True)
class _Remembered:
    entry_id: str
    expires_at: float
    """``time.monotonic()`` value at which the message_id is forgotten."""


@dataclass(slots=True)
class _Wakeup:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0


class MemoryBroker(Broker):
    """Broker whose streams live in this process, for use from one event loop at a time."""

    def __init__(self, settings: BrokerSettings) -> None:
        self._settings = settings
        self._streams: dict[str, _Stream] = {}
        self._tracked: dict[str, int] = {}
        # Every window has the same length, so insertion order is also end order
        # and ended windows can be dropped from the front.
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        # Keyed by (stream, message_id). The dedup window has one length too, so
        # the same front-first dropping applies.
        self._remembered: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()
        self._wakeups: dict[str, _Wakeup] = {}
        # Futures of read_many calls waiting on several streams, by stream.
        self._watchers: dict[str, set[asyncio.Future[None]]] = {}
        self._closed = False

    def tracked_streams(self) -> dict[str, int]:
        """Return a copy of activity tracking: stream key to last publish time in Unix seconds.

        This is the embedded counterpart of the ``stream_timestamps:{N}``
        sorted sets, for tests and diagnostics.
        """
        return dict(self._tracked)

    async def append(
        self, stream: str, data: bytes, *, end: bool, message_id: str | None = None
    ) -> str:
        self._check_open()
        return self._append_now(stream, data, end=end, message_id=message_id)

    def append_nowait(self, stream: str, data: bytes, *, message_id: str | None = None) -> asyncio.Future[str]:
        """Append at once and return the outcome as a done future: every append here is one step."""
        self._check_open()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._append_now(stream, data, end=False, message_id=message_id))
        except RateLimited as error:
            future.set_exception(error)
        return future

    async def append_many(self, stream: str, entries: Sequence[NewEntry]) -> AppendManyResult:
        self._check_open()
        if not entries:
            raise ValueError("append_many needs at least one entry, got none")
        ids: list[str] = []
        for entry in entries:
            try:
                ids.append(self._append_now(stream, entry.data, end=entry.end, message_id=entry.message_id))
            except RateLimited as error:
                return AppendManyResult(ids, error)
        return AppendManyResult(ids)

    def _append_now(self, stream: str, data: bytes, *, end: bool, message_id: str | None) -> str:
        """Run one append without awaiting, so a loop of them is one atomic step."""
        now_s = time.time()
        now_monotonic = time.monotonic()
        remembered_id = message_id if self._settings.dedup_window_s > 0 else None

        self._tracked[stream] = int(now_s)

        if remembered_id is not None:
            original_id = self._remembered_entry_id(stream, remembered_id, now_monotonic)
            if original_id is not None:
                # As on Redis, a duplicate END leaves the stream untracked.
                if end:
                    self._tracked.pop(stream, None)
                return original_id

        window = self._open_window(stream, now_monotonic)
        if window.count >= self._settings.rate_limit:
            raise rate_limited(
                stream,
                self._settings.rate_limit,
                self._settings.rate_window_s,
                window.ends_at - now_monotonic,
            )

        state = self._live_stream(stream, now_monotonic)
        if state is None:
            state = self._streams[stream] = _Stream(deque(maxlen=self._settings.max_stream_len))
        ms = max(int(now_s * 1000), state.last_ms)
        seq = state.last_seq + 1 if ms == state.last_ms else 0
        entry_id = format_entry_id(ms, seq)
        state.entries.append(_StoredEntry(ms, seq, Entry(entry_id, data)))
        state.last_ms, state.last_seq = ms, seq
        window.count += 1

        if end:
            state.expires_at = now_monotonic + self._settings.stream_ttl_s
            self._tracked.pop(stream, None)

        if remembered_id is not None:
            expires_at = now_monotonic + self._settings.dedup_window_s
            self._remembered[(stream, remembered_id)] = _Remembered(entry_id, expires_at)

        self._wake_readers(stream)
        return entry_id

    async def read(self, stream: str, after_id: str, *, count: int, block_ms: int) -> list[Entry]:
        after = check_read_request(after_id, count, block_ms)
        deadline = time.monotonic() + block_ms / 1000

        # Each pass either returns or waits for an append or close, and the
        # deadline ends the waiting.
        while True:
            self._check_open()
            entries = self._entries_after(stream, after, count)
            remaining_s = deadline - time.monotonic()
            if entries or remaining_s <= 0:
                return entries
            await self._wait_for_append(stream, remaining_s)

    async def read_many(
        self, positions: Mapping[str, str], *, count: int, block_ms: int
    ) -> dict[str, list[Entry]]:
        afters = {stream: check_read_request(after_id, count, block_ms) for stream, after_id in positions.items()}
        if not afters:
            raise ValueError("positions must name at least one stream")
        deadline = time.monotonic() + block_ms / 1000

        while True:
            self._check_open()
            found = {}
            for stream, after in afters.items():
                entries = self._entries_after(stream, after, count)
                if entries:
                    found[stream] = entries
            remaining_s = deadline - time.monotonic()
            if found or remaining_s <= 0:
                return found
            await self._wait_for_any_append(list(afters), remaining_s)

    async def info(self, stream: str) -> StreamInfo | None:
        self._check_open()
        now_monotonic = time.monotonic()
        state = self._live_stream(stream, now_monotonic)
        if state is None:
            return None
        ttl_s = None if state.expires_at is None else state.expires_at - now_monotonic
        return StreamInfo(
            length=len(state.entries),
            first_id=state.entries[0].entry.id if state.entries else None,
            last_id=state.entries[-1].entry.id if state.entries else None,
            ttl_s=ttl_s,
        )

    async def delete_idle(self, idle_s: float, *, now_s: float | None = None) -> list[str]:
        self._check_open()
        if idle_s < 0:
            raise ValueError(f"idle_s must be at least 0, got {idle_s}")
        cutoff_s = (time.time() if now_s is None else now_s) - idle_s
        now_monotonic = time.monotonic()

        # Expiry is otherwise lazy, so drop ended streams that no call has accessed since.
        for stream in list(self._streams):
            self._live_stream(stream, now_monotonic)
        self._drop_ended_windows(now_monotonic)
        self._drop_forgotten_ids(now_monotonic)

        deleted = []
        for stream, last_publish_s in list(self._tracked.items()):
            if last_publish_s > cutoff_s:
                continue
            state = self._streams.get(stream)
            if state is not None and state.entries and state.entries[-1].ms >= cutoff_s * 1000:
                continue
            if state is not None:
                del self._streams[stream]
                deleted.append(stream)
            del self._tracked[stream]
        return deleted

    async def ping(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True
        for wakeup in self._wakeups.values():
            wakeup.event.set()
        self._wakeups.clear()
        for stream in list(self._watchers):
            self._wake_watchers(stream)
        self._streams.clear()
        self._tracked.clear()
        self._windows.clear()
        self._remembered.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise broker_closed()

    def _live_stream(self, stream: str, now_monotonic: float) -> _Stream | None:
        """Return the stream's state, deleting it first when its expiry has passed."""
        state = self._streams.get(stream)
        if state is not None and state.expires_at is not None and state.expires_at <= now_monotonic:
            del self._streams[stream]
            return None
        return state

    def _open_window(self, stream: str, now_monotonic: float) -> _Window:
        """Return the stream's current rate window, starting a new one when the last has ended."""
        self._drop_ended_windows(now_monotonic)
        window = self._windows.get(stream)
        if window is None:
            window = self._windows[stream] = _Window(now_monotonic + self._settings.rate_window_s)
        return window

    def _drop_ended_windows(self, now_monotonic: float) -> None:
        while self._windows:
            stream, window = next(iter(self._windows.items()))
            if window.ends_at > now_monotonic:
                return
            del self._windows[stream]

    def _remembered_entry_id(self, stream: str, message_id: str, now_monotonic: float) -> str | None:
        """Return the entry id that ``message_id`` was appended as within the dedup window, or None."""
        self._drop_forgotten_ids(now_monotonic)
        remembered = self._remembered.get((stream, message_id))
        return None if remembered is None else remembered.entry_id

    def _drop_forgotten_ids(self, now_monotonic: float) -> None:
        while self._remembered:
            key, remembered = next(iter(self._remembered.items()))
            if remembered.expires_at > now_monotonic:
                return
            del self._remembered[key]

    def _entries_after(self, stream: str, after: tuple[int, int], count: int) -> list[Entry]:
        state = self._live_stream(stream, time.monotonic())
        if state is None:
            return []
        start = bisect.bisect_right(state.entries, after, key=lambda stored: (stored.ms, stored.seq))
        stop = min(start + count, len(state.entries))
        return [state.entries[index].entry for index in range(start, stop)]

    async def _wait_for_append(self, stream: str, timeout_s: float) -> None:
        wakeup = self._wakeups.get(stream)
        if wakeup is None:
            wakeup = self._wakeups[stream] = _Wakeup()
        wakeup.waiters += 1
        try:
            await asyncio.wait_for(wakeup.event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            wakeup.waiters -= 1
            if wakeup.waiters == 0 and self._wakeups.get(stream) is wakeup:
                del self._wakeups[stream]

    async def _wait_for_any_append(self, streams: list[str], timeout_s: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for stream in streams:
            self._watchers.setdefault(stream, set()).add(woken)
        try:
            await asyncio.wait_for(woken, timeout_s)
        except TimeoutError:
            pass
        finally:
            for stream in streams:
                watchers = self._watchers.get(stream)
                if watchers is not None:
                    watchers.discard(woken)
                    if not watchers:
                        del self._watchers[stream]

    def _wake_watchers(self, stream: str) -> None:
        for woken in self._watchers.pop(stream, ()):
            if not woken.done():
                woken.set_result(None)

    def _wake_readers(self, stream: str) -> None:
        # Readers that arrive after this point wait on a fresh event.
        wakeup = self._wakeups.pop(stream, None)
        if wakeup is not None:
            wakeup.event.set()
        self._wake_watchers(stream)
