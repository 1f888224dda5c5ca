"""Demo streams that ``conduit dev`` publishes straight through the broker for its demo page."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.base import Broker
from broker.keys import stream_key
from conduit.sdk import demo_requests
from conduit.errors import BrokerUnavailable, RateLimited
from conduit.v1alpha import publish_pb2

__all__ = ["DemoStreams", "TooManyDemoStreams"]

logger = logging.getLogger(__name__)

_MAX_RATE_LIMIT_RETRIES = 5


class TooManyDemoStreams(Exception):
    """The limit of demo streams running at once is reached, or dev mode is shutting down."""


class DemoStreams:
    """Owner of the background tasks that publish demo streams; ``stop()`` cancels them all."""

    def __init__(self, broker: Broker, *, max_running: int = 16, interval_s: float = 0.12) -> None:
        self._broker = broker
        self._max_running = max_running
        self._interval_s = interval_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def running(self) -> int:
        """Number of demo streams still publishing."""
        return len(self._tasks)

    def start(self, org_id: int, channel_id: str, text: str) -> int:
        """Begin publishing a demo stream of ``text`` to the channel; return how many messages it has."""
        if self._stopped:
            raise TooManyDemoStreams("dev mode is shutting down")
        if len(self._tasks) >= self._max_running:
            raise TooManyDemoStreams(
                f"{self._max_running} demo streams are already running; try again when one has ended"
            )
        requests = demo_requests(org_id, channel_id, text)
        task = asyncio.create_task(self._publish(org_id, channel_id, requests), name="conduit-dev-demo")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return len(requests)

    async def stop(self) -> None:
        """Reject new demo streams and cancel the running ones."""
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _publish(self, org_id: int, channel_id: str, requests: list[publish_pb2.PublishRequest]) -> None:
        stream = stream_key(org_id, channel_id)
        ids = {"org_id": org_id, "channel_id": channel_id}
        try:
            for index, request in enumerate(requests):
                if index:
                    await asyncio.sleep(self._interval_s)
                await self._append(stream, request)
        except BrokerUnavailable as error:
            logger.warning("demo stream stopped: broker unavailable", extra={**ids, "error": str(error)})
        except RateLimited:
            logger.warning("demo stream stopped: rate limit kept rejecting it", extra=ids)
        else:
            logger.info("demo stream published", extra={**ids, "messages": len(requests)})

    async def _append(self, stream: str, request: publish_pb2.PublishRequest) -> None:
        end = request.phase == publish_pb2.PHASE_END
        for attempt in range(_MAX_RATE_LIMIT_RETRIES + 1):
            try:
                await self._broker.append(stream, request.SerializeToString(), end=end)
                return
            except RateLimited as error:
                if attempt == _MAX_RATE_LIMIT_RETRIES:
                    raise
                await asyncio.sleep(error.retry_after_s)
