"""Batched read-ahead for ``PublishStream``: messages appended in runs per stream, responses in request order.

Waiting for each append before reading the next message would cost one broker
round trip per message. Here the messages that arrive while a batch is being
appended are read and validated, then appended together as the next batch:
one ``append_many`` call per stream in the batch. The guarantees:

- Responses come back in request order.
- Entries of one stream (one channel) are appended in request order, because
  a batch keeps request order within each stream and starts only after the
  previous batch has finished. The streams of one batch are appended
  concurrently.
- The first failure ends the call. No message after it is answered, and none
  after it starts its append once the failure is known. A message to another
  stream of the same batch may be stored without a response. Retrying it with
  the same message_id is safe when the broker deduplicates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

__all__ = ["STREAM_WINDOW", "StreamPublisher", "publish_batched"]

STREAM_WINDOW = 64
"""Messages of one call read ahead of the oldest unanswered one, so also the largest batch."""

_Item = TypeVar("_Item")


class StreamPublisher(Generic[_Item]):
    """The steps that ``publish_batched`` runs for each message; a front door implements them."""

    def prepare(self, data: bytes) -> _Item:
        """Authenticate and validate one message without awaiting; record and raise the error that ends the call."""
        raise NotImplementedError

    def stream_of(self, item: _Item) -> str:
        """Return the stream key that ``item`` is appended to."""
        raise NotImplementedError

    async def append(self, stream: str, items: list[_Item]) -> tuple[list[str], Exception | None]:
        """Append ``items`` to ``stream`` in order; return the ids of the first ones stored and the error that stopped the rest.

        It records the outcome of every item it was given, also when it
        raises or is cancelled. An exception raised here fails every item.
        """
        raise NotImplementedError

    def abandon(self, items: list[_Item]) -> None:
        """Record that ``items`` get no response, because an earlier message failed or the call ended."""
        raise NotImplementedError


class _ReadAhead(Generic[_Item]):
    """Reads and prepares messages into a buffer while fewer than ``window`` have no response yet."""

    def __init__(self, requests: AsyncIterator[bytes], publisher: StreamPublisher[_Item], window: int) -> None:
        self._requests = requests
        self._publisher = publisher
        self._window = window
        self.buffer: list[_Item] = []
        self.unanswered = 0
        # The error that ended reading: a message that failed to prepare, or
        # what the request iterator raised. None after a clean end.
        self.error: BaseException | None = None
        self.finished = False
        self.readable = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()

    async def run(self) -> None:
        try:
            while True:
                while self.unanswered >= self._window:
                    self.has_room.clear()
                    await self.has_room.wait()
                data = await anext(self._requests)
                item = self._publisher.prepare(data)
                self.buffer.append(item)
                self.unanswered += 1
                self.readable.set()
        except StopAsyncIteration:
            pass
        except BaseException as error:
            self.error = error
            if not isinstance(error, Exception):
                raise
        finally:
            self.finished = True
            self.readable.set()

    def answered(self, count: int) -> None:
        self.unanswered -= count
        if self.unanswered < self._window:
            self.has_room.set()


async def publish_batched(
    requests: AsyncIterator[bytes],
    publisher: StreamPublisher[_Item],
    *,
    window: int = STREAM_WINDOW,
) -> AsyncIterator[str]:
    """Yield the stream id of each request in request order; raise the first error.

    At most ``window`` messages are read ahead of the oldest unanswered one.
    Items prepared but never passed to ``publisher.append`` are passed to
    ``publisher.abandon``.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    reader = _ReadAhead(requests, publisher, window)
    reading = asyncio.create_task(reader.run(), name="publish-stream-read-ahead")
    try:
        while True:
            if not reader.buffer:
                if reader.finished:
                    break
                # The reader sets the event after each item it buffers and when it finishes.
                reader.readable.clear()
                await reader.readable.wait()
                continue
            batch, reader.buffer = reader.buffer, []
            ids, error = await _append_batch(publisher, batch)
            for stream_id in ids:
                yield stream_id
                reader.answered(1)
            if error is not None:
                raise error
        await reading
        if reader.error is not None:
            raise reader.error
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        if reader.buffer:
            publisher.abandon(reader.buffer)


async def _append_batch(publisher: StreamPublisher[_Item], batch: list[_Item]) -> tuple[list[str], Exception | None]:
    """Append ``batch`` as one run per stream; return the ids before the first failure in request order and that failure."""
    streams: dict[str, list[int]] = {}
    for index, item in enumerate(batch):
        streams.setdefault(publisher.stream_of(item), []).append(index)
    if len(streams) == 1:
        [stream] = streams
        return await _append_run(publisher, stream, batch)

    runs = list(streams.items())
    results = await asyncio.gather(
        *(_append_run(publisher, stream, [batch[index] for index in indexes]) for stream, indexes in runs)
    )
    ids: list[str | None] = [None] * len(batch)
    first_failure = len(batch)
    failure: Exception | None = None
    for (_, indexes), (run_ids, error) in zip(runs, results, strict=True):
        for index, stream_id in zip(indexes, run_ids):
            ids[index] = stream_id
        if error is not None and indexes[len(run_ids)] < first_failure:
            first_failure = indexes[len(run_ids)]
            failure = error
    # Items of other streams after the failure were stored but get no response.
    return [stream_id for stream_id in ids[:first_failure] if stream_id is not None], failure


async def _append_run(
    publisher: StreamPublisher[_Item], stream: str, items: list[_Item]
) -> tuple[list[str], Exception | None]:
    try:
        return await publisher.append(stream, items)
    except Exception as error:
        return [], error
