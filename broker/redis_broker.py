"""The Redis broker: one Redis stream per channel, as the original Rust services lay it out.

Each Lua script touches keys of one hash slot only, so the broker works on a
single Redis and on Redis Cluster alike. The tracking shards live in other
slots and are updated by separate commands: tracked before the append, so that
cleanup can find every stream, and untracked after an END. A stream that this
process tracked less than ``tracking_refresh_s`` ago is not tracked again (see
``RedisBroker.append``), so a publish to a busy stream is one round trip. On
a single Redis, appends in flight at the same time share one batch: one write
and one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from broker.base import AppendManyResult, Broker, Entry, NewEntry, StreamInfo
from broker.cursors import ReadCursors
from broker.errors import broker_closed, rate_limited, redis_errors_as_unavailable
from broker.ids import check_read_request, format_entry_id
from broker.keys import all_tracking_keys, dedup_key, rate_limit_key, stream_log_fields, tracking_key
from broker.redis_evalsha import run_evalsha_batch_on
from broker.redis_exchange import exchange, owned_connection
from broker.redis_xread import EncodedStreams, data_field, entries_of_reply
from conduit.errors import BrokerUnavailable
from conduit.settings import BrokerSettings

__all__ = ["DEFAULT_MAX_BLOCK_MS", "TRACKING_REFRESH_S", "RedisBroker"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK_MS = 2000
"""Longest XREAD BLOCK issued unless the constructor sets another; it must stay below the client's socket timeout."""

TRACKING_REFRESH_S = 1.0
"""Seconds after tracking a stream during which its publishes skip the tracking ZADD.

A tracking score is then up to this much (plus its whole-second rounding)
older than the stream's newest entry. The sweep checks that entry before
deleting a stream, so any value is safe. One well below the cleanup idle time
(CLEANUP_STREAM_IDLE_SEC) keeps live streams out of the sweep's candidates."""

# Streams remembered as tracked, per process. Past this the oldest is forgotten
# and simply tracked again on its next publish.
_MAX_RECENTLY_TRACKED = 65_536
# Idle XREAD connections kept per broker: one per reader that reads at the same time.
_MAX_IDLE_READ_CONNECTIONS = 4
# Maximum appends per batch. A batch is one write and one read.
_MAX_APPEND_BATCH = 64
# How long the append batch task waits for the next append before it ends.
_APPEND_TASK_IDLE_S = 10.0
_SWEEP_BATCH_SIZE = 100
_MAX_REPORTED_FOREIGN_ENTRIES = 1024
_DELETED = 1
_KEPT = -1
# First elements of append.lua's reply: the rate limit rejected the publish,
# or the caller skipped tracking and the stream does not exist.
_RATE_LIMITED = 0
_NOT_TRACKED = 3
# ASCII codes of the digits 0-9, for append_many.lua's flags argument.
_DIGITS = b"0123456789"
# Redis may have run an append whose reply timed out or whose connection
# broke, so the error message includes how to retry without a duplicate.
_APPEND_ERRORS = redis_errors_as_unavailable(
    "append", "the message may or may not be stored, so retry it with the same message_id"
)
_APPEND_MANY_ERRORS = redis_errors_as_unavailable(
    "append", "the messages may or may not be stored, so retry them with the same message_ids"
)


def _load_script(name: str) -> str:
    return resources.files("broker").joinpath("lua", name).read_text(encoding="utf-8")


_APPEND_SCRIPT = _load_script("append.lua")
_APPEND_MANY_SCRIPT = _load_script("append_many.lua")
_DELETE_IF_IDLE_SCRIPT = _load_script("delete_if_idle.lua")
_UNTRACK_IF_IDLE_SCRIPT = _load_script("untrack_if_idle.lua")
_INFO_SCRIPT = _load_script("info.lua")


_Settle = Callable[["asyncio.Future[Any]", Any], None]
"""Turns a script's reply, or the exception that stands for it, into the outcome of the caller's future."""

_PendingAppend = tuple[AsyncScript, list[str], list[Any], "asyncio.Future[Any]", _Settle]
"""An append waiting for the batch task: its script, keys, args, the caller's future and how to settle it."""


class RedisBroker(Broker):
    """Broker on Redis Streams through a redis-py asyncio client (single node or cluster).

    ``read`` blocks at most ``max_block_ms`` per call, whatever ``block_ms``
    requests, and returns an empty list when that shorter wait ends, so a
    blocked XREAD never outlives the client's socket timeout. Callers loop anyway.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        settings: BrokerSettings,
        *,
        max_block_ms: int = DEFAULT_MAX_BLOCK_MS,
        tracking_refresh_s: float = TRACKING_REFRESH_S,
    ) -> None:
        """``tracking_refresh_s=0`` tracks the stream before every append."""
        if max_block_ms < 1:
            raise ValueError(f"max_block_ms must be at least 1, got {max_block_ms}")
        if tracking_refresh_s < 0:
            raise ValueError(f"tracking_refresh_s must be at least 0, got {tracking_refresh_s}")
        self._client = client
        self._settings = settings
        self._max_block_ms = max_block_ms
        self._tracking_refresh_s = tracking_refresh_s
        # Stream key -> time.monotonic() of its last tracking ZADD, oldest first.
        self._tracked_at: dict[str, float] = {}
        # register_script makes no network call; each script is sent with
        # EVALSHA and loaded on the first NOSCRIPT reply.
        self._append_script = client.register_script(_APPEND_SCRIPT)
        self._append_many_script = client.register_script(_APPEND_MANY_SCRIPT)
        self._delete_if_idle_script = client.register_script(_DELETE_IF_IDLE_SCRIPT)
        self._untrack_if_idle_script = client.register_script(_UNTRACK_IF_IDLE_SCRIPT)
        self._info_script = client.register_script(_INFO_SCRIPT)
        # Checked once here, because read_group runs for every channel a gateway opens.
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._batching = self._cluster is None
        # Appends waiting for the batch task: script, keys, args, and the
        # caller's future. Each caller adds one item and awaits it, so the list
        # is bounded by the number of appends in flight.
        self._pending_appends: list[_PendingAppend] = []
        self._append_batch_task: asyncio.Task[None] | None = None
        # Full appends that append_nowait handed over after finding its stream gone; close() cancels them.
        self._retracking_tasks: set[asyncio.Task[str]] = set()
        # Set while the batch task waits for appends. An append resolves it to wake the task.
        self._append_wakeup: asyncio.Future[None] | None = None
        # Connections of finished XREADs on a single Redis, kept for the next read (see _xread).
        self._read_connections: list[Connection] = []
        self._read_timeout_s: float | None = None
        # Deadlines of the reads in progress, which close() moves to now.
        self._read_deadlines: set[asyncio.Timeout] = set()
        self._reported_foreign_entries: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._closed = False

    async def append(
        self, stream: str, data: bytes, *, end: bool, message_id: str | None = None
    ) -> str:
        """Append per the Broker contract: track the stream, then run append.lua.

        The tracking ZADD is skipped when this process tracked the stream less
        than ``tracking_refresh_s`` ago. The script then gets a flag for it, and if the
        stream no longer exists (cleanup deleted it, or it expired after an
        END) it appends nothing and the stream is tracked before the script
        runs again. So every stream is tracked before it is created, and a
        busy stream's publish is one round trip.
        """
        self._check_open()
        keys, args = self._append_arguments(stream, data, end=end, message_id=message_id)

        with _APPEND_ERRORS:
            tracked_at = self._tracked_at.get(stream)
            skip_tracking = tracked_at is not None and time.monotonic() - tracked_at < self._tracking_refresh_s
            if not skip_tracking:
                await self._track(stream)
            outcome, value = await self._run_append(self._append_script, keys, [*args, 1 if skip_tracking else 0])
            if outcome == _NOT_TRACKED:
                await self._track(stream)
                outcome, value = await self._run_append(self._append_script, keys, [*args, 0])
        if outcome == _RATE_LIMITED:
            raise rate_limited(
                stream, self._settings.rate_limit, self._settings.rate_window_s, value / 1000
            )
        entry_id = value.decode()

        # A duplicate END may have been tracked again above, so it is untracked too.
        if end:
            self._tracked_at.pop(stream, None)
            await self._untrack_ended(stream, entry_id)
        return entry_id

    def append_nowait(self, stream: str, data: bytes, *, message_id: str | None = None) -> asyncio.Future[str] | None:
        """Queue append.lua in the next batch when this process tracked ``stream`` recently; else return None.

        On Redis Cluster every append is its own call, so this returns None
        there. The future waits at most as long as the batch exchanges ahead
        of it, each bounded by the client's socket timeout. If the stream
        vanished since it was tracked, a task runs the whole ``append``, which
        tracks it again, and the future takes that task's outcome.
        """
        self._check_open()
        if not self._batching:
            return None
        tracked_at = self._tracked_at.get(stream)
        if tracked_at is None or time.monotonic() - tracked_at >= self._tracking_refresh_s:
            return None
        keys, args = self._append_arguments(stream, data, end=False, message_id=message_id)
        args.append(1)
        settle = functools.partial(self._settle_nowait, stream, data, message_id)
        return self._queue_append(self._append_script, keys, args, settle)

    def _settle_nowait(
        self, stream: str, data: bytes, message_id: str | None, entry_id: asyncio.Future[str], reply: Any
    ) -> None:
        """Resolve ``append_nowait``'s future from the reply of its batched append.lua, or from the batch's error."""
        if isinstance(reply, Exception):
            try:
                with _APPEND_ERRORS:
                    raise reply
            except Exception as error:
                # BrokerUnavailable, from the mapping above or from close().
                entry_id.set_exception(error)
            return
        outcome, value = reply
        if outcome == _RATE_LIMITED:
            entry_id.set_exception(
                rate_limited(stream, self._settings.rate_limit, self._settings.rate_window_s, value / 1000)
            )
        elif outcome == _NOT_TRACKED:
            task = asyncio.create_task(self.append(stream, data, end=False, message_id=message_id))
            self._retracking_tasks.add(task)
            task.add_done_callback(functools.partial(_copy_outcome, entry_id))
            task.add_done_callback(self._retracking_tasks.discard)
        else:
            entry_id.set_result(value.decode())

    def _append_arguments(
        self, stream: str, data: bytes, *, end: bool, message_id: str | None
    ) -> tuple[list[str], list[Any]]:
        """Return append.lua's keys and its arguments up to, not including, the skip-tracking flag."""
        settings = self._settings
        keys = [stream, rate_limit_key(stream)]
        if message_id is not None and settings.dedup_window_s > 0:
            keys.append(dedup_key(stream, message_id))
        args = [
            data,
            settings.max_stream_len,
            settings.rate_limit,
            settings.rate_window_s * 1000,
            1 if end else 0,
            settings.stream_ttl_s,
            settings.dedup_window_s * 1000,
        ]
        return keys, args

    async def append_many(self, stream: str, entries: Sequence[NewEntry]) -> AppendManyResult:
        """Append per the Broker contract: track the stream as ``append`` does, then run append_many.lua once."""
        self._check_open()
        if not entries:
            raise ValueError("append_many needs at least one entry, got none")
        dedup = self._settings.dedup_window_s > 0
        rate_key = rate_limit_key(stream)
        keys = [stream, rate_key]
        flags = bytearray()
        for entry in entries:
            remembered = dedup and entry.message_id is not None
            if dedup:
                # Every entry has a key slot, so KEYS[2 + i] belongs to entry i.
                keys.append(dedup_key(stream, entry.message_id) if remembered else rate_key)
            flags.append(_DIGITS[entry.end + 2 * remembered])
        settings = self._settings
        head = [
            settings.max_stream_len,
            settings.rate_limit,
            settings.rate_window_s * 1000,
            settings.stream_ttl_s,
            settings.dedup_window_s * 1000,
        ]

        with _APPEND_MANY_ERRORS:
            tracked_at = self._tracked_at.get(stream)
            skip_tracking = tracked_at is not None and time.monotonic() - tracked_at < self._tracking_refresh_s
            if not skip_tracking:
                await self._track(stream)
            args = [*head, 1 if skip_tracking else 0, 1 if dedup else 0, bytes(flags), *(entry.data for entry in entries)]
            reply = await self._run_append(self._append_many_script, keys, args)
            if reply[0] == _NOT_TRACKED:
                await self._track(stream)
                args[5] = 0
                reply = await self._run_append(self._append_many_script, keys, args)
        ids = reply[2].decode().split() if reply[2] else []
        if reply[0] == _RATE_LIMITED:
            error = rate_limited(stream, settings.rate_limit, settings.rate_window_s, reply[1] / 1000)
            return AppendManyResult(ids, error)

        # As after the same append calls: the stream stays tracked unless the last entry is an END.
        if entries[-1].end:
            self._tracked_at.pop(stream, None)
            await self._untrack_ended(stream, ids[-1])
        return AppendManyResult(ids)

    async def read(self, stream: str, after_id: str, *, count: int, block_ms: int) -> list[Entry]:
        """Read per the Broker contract, skipping entries without a ``data`` field.

        Such entries come from another writer. The read continues past them
        within the same call, so a caller that resumes from the last entry it
        received never spins on them.
        """
        position = format_entry_id(*check_read_request(after_id, count, block_ms))
        self._check_open()
        # XREAD BLOCK 0 waits forever, so a zero block_ms sends no BLOCK at all.
        block = min(block_ms, self._max_block_ms) if block_ms > 0 else None

        deadline = asyncio.timeout(None)
        self._read_deadlines.add(deadline)
        try:
            async with deadline:
                # Each pass moves past at least one entry of a finite stream.
                while True:
                    with redis_errors_as_unavailable("read"):
                        response = await self._client.xread({stream: position}, count=count, block=block)
                    entries, last_id = self._entries_from_xread(stream, response)
                    if entries or last_id is None:
                        return entries
                    position = last_id
        except TimeoutError:
            # Only close() moves this deadline, and every other timeout was
            # already turned into BrokerUnavailable inside.
            raise broker_closed() from None
        finally:
            self._read_deadlines.discard(deadline)

    async def read_many(
        self, positions: Mapping[str, str], *, count: int, block_ms: int
    ) -> dict[str, list[Entry]]:
        """Read per the Broker contract with one XREAD over every stream, skipping entries without ``data``.

        Given ``ReadCursors``, the encoded XREAD arguments stay in them between
        calls, and only the streams set or deleted since the last call are
        encoded again. On a single Redis the command goes out pre-packed on a
        pooled connection, with the client's retry policy.
        """
        if not positions:
            raise ValueError("positions must name at least one stream")
        check_read_request("0-0", count, block_ms)
        # Checked here because redis-py's own cross-slot error would surface
        # as BrokerUnavailable, hiding a caller's mistake as an outage.
        encoded = self._encoded_streams(positions)
        self._check_open()
        block = min(block_ms, self._max_block_ms) if block_ms > 0 else None

        deadline = asyncio.timeout(None)
        self._read_deadlines.add(deadline)
        try:
            async with deadline:
                # Each pass moves at least one position past an entry without data.
                while True:
                    with redis_errors_as_unavailable("read"):
                        reply = await self._xread(encoded, count, block)
                    found, last_ids = self._entries_by_stream(reply)
                    if found or not last_ids:
                        return found
                    positions = {**positions, **last_ids}
                    encoded = self._encoded_streams(positions)
        except TimeoutError:
            raise broker_closed() from None
        finally:
            self._read_deadlines.discard(deadline)

    def read_group(self, stream: str) -> str:
        if self._cluster is not None:
            return str(self._cluster.keyslot(stream))
        return ""

    async def info(self, stream: str) -> StreamInfo | None:
        self._check_open()
        with redis_errors_as_unavailable("info"):
            reply = await self._info_script(keys=[stream])
        if reply is None:
            return None
        length, first_id, last_id, ttl_ms = reply
        return StreamInfo(
            length=int(length),
            first_id=first_id.decode() if first_id is not None else None,
            last_id=last_id.decode() if last_id is not None else None,
            ttl_s=ttl_ms / 1000 if ttl_ms >= 0 else None,
        )

    async def delete_idle(self, idle_s: float, *, now_s: float | None = None) -> list[str]:
        """Sweep every tracking shard, deleting idle streams and untracking vanished ones.

        Each stream is checked and deleted by a script on its own key, then
        untracked by a script on the shard that keeps it when a publish raised
        its score past the cutoff meanwhile. A sweep visits at most the members
        a shard had in range when the sweep reached it. Streams that a
        concurrent change moves past the batch offset wait for the next sweep.
        """
        self._check_open()
        if idle_s < 0:
            raise ValueError(f"idle_s must be at least 0, got {idle_s}")
        # The local clock picks the candidates from the tracking scores, which
        # publishers stamp. Without now_s, delete_if_idle.lua decides by Redis's
        # clock, which stamps the entry ids, so a cleanup host whose clock runs
        # ahead cannot delete a stream that is still being published to.
        cutoff_s = (time.time() if now_s is None else now_s) - idle_s
        delete_args = [int(idle_s * 1000), "" if now_s is None else int(now_s * 1000)]

        deleted: list[str] = []
        with redis_errors_as_unavailable("cleanup"):
            for shard in all_tracking_keys():
                deleted.extend(await self._sweep_shard(shard, cutoff_s, delete_args))
        return deleted

    async def ping(self) -> None:
        """Ping Redis; on a cluster, every master, because each one serves a share of the channels.

        redis-py sends a cluster PING to one node unless given target nodes, which
        would report a cluster with a master down as reachable.
        """
        self._check_open()
        with redis_errors_as_unavailable("ping"):
            if self._cluster is not None:
                await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self._client.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._retracking_tasks):
            task.cancel()
        if self._append_batch_task is not None:
            self._append_batch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._append_batch_task
        loop = asyncio.get_running_loop()
        for deadline in list(self._read_deadlines):
            deadline.reschedule(loop.time())
        for connection in self._read_connections:
            await connection.disconnect()
        self._read_connections.clear()
        with redis_errors_as_unavailable("close"):
            await self._client.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise broker_closed()

    async def _run_append(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run an append script; on a single Redis, in one batch with the other appends waiting.

        A single Redis runs a connection's commands in the order sent, so
        batching keeps the order of appends that are in flight together. A
        cluster pipeline sends each node its share concurrently, so on a
        cluster each append is its own call. A caller that is cancelled
        before its batch is sent leaves nothing behind.
        """
        if not self._batching:
            return await script(keys=keys, args=args)
        return await self._queue_append(script, keys, args, _settle_raw)

    def _queue_append(
        self, script: AsyncScript, keys: list[str], args: list[Any], settle: _Settle
    ) -> asyncio.Future[Any]:
        """Add one script call to the next batch and return its future, which ``settle`` resolves; start the batch task if needed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending_appends.append((script, keys, args, future, settle))
        wakeup = self._append_wakeup
        if wakeup is not None:
            # The task rechecks the list when it wakes, also when its idle timer resolved this first.
            self._append_wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        elif self._append_batch_task is None:
            self._append_batch_task = asyncio.create_task(self._send_append_batches(), name="redis-append-batches")
        return future

    async def _send_append_batches(self) -> None:
        """Send the waiting appends in batches; between batches, wait up to ``_APPEND_TASK_IDLE_S`` for more.

        The task outlives a batch because starting a task for every batch
        costs a task and an event-loop pass, and under load most batches find
        the list empty when their replies arrive. It keeps one connection of
        its own (``owned_connection``) from its first batch until it ends,
        after the idle time or when close() cancels it.
        """
        loop = asyncio.get_running_loop()
        # Made at the first batch and kept until the task ends, so each batch skips a pool checkout.
        connection: Connection | None = None
        timeout_s: float | None = None
        batch: list[_PendingAppend] = []
        try:
            while True:
                if not self._pending_appends:
                    await self._wait_for_appends(loop)
                    if not self._pending_appends:
                        return
                batch = [item for item in self._pending_appends[:_MAX_APPEND_BATCH] if not item[3].done()]
                del self._pending_appends[:_MAX_APPEND_BATCH]
                if not batch:
                    continue
                try:
                    if connection is None:
                        connection, timeout_s = owned_connection(self._client)
                    replies = await self._execute_appends(connection, batch, timeout_s)
                except Exception as error:
                    replies = [error] * len(batch)
                for (_, _, _, future, settle), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    try:
                        settle(future, reply)
                    except Exception as error:
                        # A reply of an unexpected shape fails its own append, not the batch task.
                        future.set_exception(error)
                batch = []
        finally:
            self._append_batch_task = None
            self._append_wakeup = None
            # Only close() cancels this task: every append still waiting fails.
            for _, _, _, future, _ in [*batch, *self._pending_appends]:
                if not future.done():
                    future.set_exception(broker_closed())
            self._pending_appends.clear()
            if connection is not None:
                await connection.disconnect()

    async def _wait_for_appends(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until an append arrives or ``_APPEND_TASK_IDLE_S`` passes."""
        wakeup: asyncio.Future[None] = loop.create_future()
        self._append_wakeup = wakeup
        timer = loop.call_later(_APPEND_TASK_IDLE_S, _resolve, wakeup)
        try:
            await wakeup
        finally:
            timer.cancel()
            if self._append_wakeup is wakeup:
                self._append_wakeup = None

    async def _execute_appends(
        self, connection: Connection, batch: list[_PendingAppend], timeout_s: float | None
    ) -> list[Any]:
        """Run each item's script once in one batch; load the scripts and rerun the items that found theirs missing."""
        calls = [(script.sha, keys, args) for script, keys, args, _, _ in batch]
        replies = await run_evalsha_batch_on(connection, calls, timeout_s=timeout_s)
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # After a SCRIPT FLUSH or a restart of Redis. The reruns keep their relative order.
            for source in {batch[index][0].script for index in missing}:
                await self._client.script_load(source)
            reruns = await run_evalsha_batch_on(
                connection,
                [(batch[index][0].sha, batch[index][1], batch[index][2]) for index in missing],
                timeout_s=timeout_s,
            )
            for index, reply in zip(missing, reruns, strict=True):
                replies[index] = reply
        return replies

    async def _track(self, stream: str) -> None:
        """ZADD the stream to its tracking shard and remember when."""
        started = time.monotonic()
        await self._client.zadd(tracking_key(stream), {stream: int(time.time())})
        if self._tracking_refresh_s <= 0:
            return
        self._tracked_at.pop(stream, None)
        self._tracked_at[stream] = started
        if len(self._tracked_at) > _MAX_RECENTLY_TRACKED:
            del self._tracked_at[next(iter(self._tracked_at))]

    async def _untrack_ended(self, stream: str, entry_id: str) -> None:
        """Take an ended stream off tracking; a failure is logged, not raised.

        The END entry is already stored with its expiry, so failing the publish
        now would make the caller repeat it. A stream left tracked expires and
        the next cleanup sweep untracks it.
        """
        try:
            with redis_errors_as_unavailable("untrack"):
                await self._client.zrem(tracking_key(stream), stream)
        except BrokerUnavailable as error:
            logger.warning(
                "could not untrack ended stream; cleanup will untrack it after it expires",
                extra={**stream_log_fields(stream), "entry_id": entry_id, "error": str(error)},
            )

    async def _sweep_shard(self, shard: str, cutoff_s: float, delete_args: list[int | str]) -> list[str]:
        remaining = await self._client.zcount(shard, "-inf", cutoff_s)
        deleted: list[str] = []
        # Deleted and untracked members leave the range while kept ones stay
        # at its front, so the next batch starts after the kept ones.
        kept_count = 0
        while remaining > 0:
            members = await self._client.zrangebyscore(
                shard, "-inf", cutoff_s, start=kept_count, num=min(_SWEEP_BATCH_SIZE, remaining)
            )
            if not members:
                break
            remaining -= len(members)

            for member in members:
                outcome = await self._delete_if_idle_script(keys=[member], args=delete_args)
                if outcome == _KEPT:
                    kept_count += 1
                    continue
                if outcome == _DELETED:
                    deleted.append(member.decode("utf-8", errors="replace"))
                await self._untrack_if_idle_script(keys=[shard], args=[member, cutoff_s])
        return deleted

    def _entries_from_xread(self, stream: str, response: Any) -> tuple[list[Entry], str | None]:
        """Return the entries of an XREAD reply in RESP2 form and the last id it contained.

        The reply looks like ``[[name, [(id, fields), ...]]]``. Entries without
        a ``data`` field are left out and logged once each.
        """
        entries = []
        last_id = None
        for _name, raw_entries in response or []:
            for raw_id, fields in raw_entries:
                last_id = raw_id.decode()
                data = fields.get(b"data") if fields else None
                if data is None:
                    self._report_foreign_entry(stream, last_id)
                    continue
                entries.append(Entry(last_id, data))
        return entries, last_id

    def _encoded_streams(self, positions: Mapping[str, str]) -> EncodedStreams:
        """Return the encoded XREAD arguments of ``positions``, updating those kept in ``ReadCursors``."""
        if isinstance(positions, ReadCursors):
            encoded = positions.broker_cache
            if isinstance(encoded, EncodedStreams) and encoded.owner is self:
                encoded.apply(positions, positions.changes)
            else:
                encoded = self._new_encoded_streams(positions)
                positions.broker_cache = encoded
            positions.clear_changes()
            return encoded
        return self._new_encoded_streams(positions)

    def _new_encoded_streams(self, positions: Mapping[str, str]) -> EncodedStreams:
        slot_of = self._cluster.keyslot if self._cluster is not None else None
        encoded = EncodedStreams(self, packed=self._cluster is None, slot_of=slot_of)
        encoded.apply(positions, positions)
        return encoded

    async def _xread(self, encoded: EncodedStreams, count: int, block: int | None) -> Any:
        """Send the XREAD of ``encoded`` and return its reply, parsed by redis-py on a cluster only.

        The cluster client routes the command by its keys and follows
        redirects, so it gets the arguments. A single Redis gets the packed
        command on a connection of the broker's own (``owned_connection``),
        kept between reads: a gateway's reader issues one XREAD after
        another, and a pool checkout with redis-py's timeouts cost more than
        the read's own work. A failed or cancelled read disconnects that
        connection, as redis-py does for its own commands.
        """
        if self._cluster is not None:
            return await self._cluster.execute_command(*encoded.arguments(count, block))
        command = encoded.packed_command(count, block)
        if self._read_connections:
            connection = self._read_connections.pop()
            timeout_s = self._read_timeout_s
        else:
            connection, timeout_s = self._new_read_connection()
        try:
            # The socket timeout is above max_block_ms (see __init__), so it also bounds a blocked XREAD.
            (reply,) = await connection.retry.call_with_retry(
                lambda: exchange(connection, command, 1, timeout_s), lambda _error: connection.disconnect()
            )
        finally:
            if self._closed or len(self._read_connections) >= _MAX_IDLE_READ_CONNECTIONS:
                await connection.disconnect()
            else:
                self._read_connections.append(connection)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _new_read_connection(self) -> tuple[Connection, float | None]:
        connection, timeout_s = owned_connection(self._client)
        self._read_timeout_s = timeout_s
        return connection, timeout_s

    def _entries_by_stream(self, reply: Any) -> tuple[dict[str, list[Entry]], dict[str, str]]:
        """Return the entries of a multi-stream XREAD reply by stream, and the last id read of each stream."""
        found: dict[str, list[Entry]] = {}
        last_ids: dict[str, str] = {}
        for raw_name, raw_entries in entries_of_reply(reply):
            stream = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            entries: list[Entry] = []
            entry_id = None
            for raw_id, fields in raw_entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                data = data_field(fields)
                if data is None:
                    self._report_foreign_entry(stream, entry_id)
                    continue
                entries.append(Entry(entry_id, data))
            if entries:
                found[stream] = entries
            if entry_id is not None:
                last_ids[stream] = entry_id
        return found, last_ids

    def _report_foreign_entry(self, stream: str, entry_id: str) -> None:
        # Every later read from before the entry skips it again, so only the
        # first skip is logged. The set of reported entries has a fixed size.
        if (stream, entry_id) in self._reported_foreign_entries:
            return
        self._reported_foreign_entries[(stream, entry_id)] = None
        if len(self._reported_foreign_entries) > _MAX_REPORTED_FOREIGN_ENTRIES:
            self._reported_foreign_entries.popitem(last=False)
        logger.warning(
            "skipped stream entry without a data field",
            extra={**stream_log_fields(stream), "entry_id": entry_id},
        )


def _copy_outcome(target: asyncio.Future[str], source: asyncio.Task[str]) -> None:
    if source.cancelled():
        error: BaseException | None = broker_closed()
    else:
        # Read even when the caller has cancelled ``target``, so that asyncio does not log it as never retrieved.
        error = source.exception()
    if target.done():
        return
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _settle_raw(future: asyncio.Future[Any], reply: Any) -> None:
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
