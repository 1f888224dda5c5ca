"""Read-ahead for ``PublishStream``: up to a window of messages in flight, responses in request order.

Waiting for each append before reading the next message would cost one broker
round trip per message. Here the next messages are read, validated and
appended while earlier appends are still in flight, with these guarantees:

- Responses come back in request order.
- Entries of one stream (one channel) are appended in request order: a
  message's append starts only after the previous message to the same stream
  has finished. Messages to different streams are appended concurrently.
- The first failure ends the call. No message after it is answered, and none
  after it starts its append once the failure is known. A message to another
  stream whose append was already in flight at that moment may be stored
  without a response; retrying it with the same message_id is safe when the
  broker deduplicates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from publish_grpc.validation import ValidatedPublish

__all__ = ["STREAM_WINDOW", "BeforeAppend", "publish_pipelined"]

STREAM_WINDOW = 32
"""Messages of one call read ahead of the oldest unanswered one."""

BeforeAppend = Callable[[ValidatedPublish], Awaitable[None]]
"""Hook that a publish awaits after validation and right before its broker append."""


class _StreamOrder:
    """Per-stream append order and the index of the first failed message of one call."""

    def __init__(self) -> None:
        self._last_by_stream: dict[str, asyncio.Future[None]] = {}
        self._first_failure: int | None = None

    async def run(self, index: int, publish: Callable[[BeforeAppend], Awaitable[str]]) -> str:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream_keys: list[str] = []

        async def before_append(validated: ValidatedPublish) -> None:
            # Registering comes before the first await, and tasks start in
            # creation order, so the chain of one stream follows request order.
            previous = self._last_by_stream.get(validated.stream_key)
            self._last_by_stream[validated.stream_key] = done
            stream_keys.append(validated.stream_key)
            if previous is not None:
                await asyncio.shield(previous)
            if self._first_failure is not None and self._first_failure < index:
                raise asyncio.CancelledError("an earlier message of this call failed")

        try:
            return await publish(before_append)
        except Exception:
            if self._first_failure is None or index < self._first_failure:
                self._first_failure = index
            raise
        finally:
            if not done.done():
                done.set_result(None)
            for key in stream_keys:
                if self._last_by_stream.get(key) is done:
                    del self._last_by_stream[key]


async def publish_pipelined(
    requests: AsyncIterator[bytes],
    publish: Callable[[bytes, BeforeAppend], Awaitable[str]],
    *,
    window: int = STREAM_WINDOW,
) -> AsyncIterator[str]:
    """Yield the stream id of each request in request order; raise the first publish's error.

    ``publish(data, before_append)`` must validate ``data`` without awaiting,
    then await ``before_append`` right before its broker append. At most
    ``window`` messages are read ahead of the oldest unanswered one.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    order = _StreamOrder()
    slots = asyncio.Semaphore(window)
    # Contains at most `window` tasks plus the end marker, because of `slots`.
    answers: asyncio.Queue[asyncio.Task[str] | None] = asyncio.Queue()
    unanswered: set[asyncio.Task[str]] = set()

    async def read_ahead() -> None:
        index = 0
        try:
            while True:
                await slots.acquire()
                try:
                    data = await anext(requests)
                except StopAsyncIteration:
                    return
                task = asyncio.create_task(order.run(index, lambda hook, data=data: publish(data, hook)))
                unanswered.add(task)
                answers.put_nowait(task)
                index += 1
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read_ahead(), name="publish-stream-read-ahead")
    try:
        while (task := await answers.get()) is not None:
            stream_id = await task
            unanswered.discard(task)
            slots.release()
            yield stream_id
        # Raises what the request iterator raised, for example a cancelled call.
        await reader
    finally:
        reader.cancel()
        for task in unanswered:
            task.cancel()
        # Gathering also retrieves the errors of tasks that failed after the first one.
        await asyncio.gather(reader, *unanswered, return_exceptions=True)
