"""The cleanup role: periodically delete streams that went idle without an END.

``conduit serve cleanup [flags]`` runs ``run_cleanup``; ``python -m broker.cleanup
[flags]`` does the same.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from broker.base import Broker
from broker.keys import stream_log_fields
from conduit.errors import BrokerUnavailable
from conduit.settings import CleanupSettings

__all__ = ["run_cleanup"]

logger = logging.getLogger(__name__)


async def run_cleanup(broker: Broker, settings: CleanupSettings, stopping: asyncio.Event) -> None:
    """Sweep at once, then every ``settings.interval_s``, until ``stopping`` is set.

    Each sweep deletes the streams idle for ``settings.stream_idle_s`` and logs
    each one at INFO. A broker error is logged at WARNING and the next sweep
    runs on schedule. Setting ``stopping`` ends the wait between sweeps at
    once, but a sweep in progress finishes first unless the task is cancelled.
    """
    while not stopping.is_set():
        await _sweep(broker, settings.stream_idle_s)
        try:
            await asyncio.wait_for(stopping.wait(), settings.interval_s)
        except TimeoutError:
            pass


async def _sweep(broker: Broker, idle_s: float) -> None:
    try:
        deleted = await broker.delete_idle(idle_s)
    except BrokerUnavailable as error:
        logger.warning("cleanup sweep failed; retrying at the next interval", extra={"error": str(error)})
        return

    for stream in deleted:
        logger.info("deleted idle stream", extra=stream_log_fields(stream))


if __name__ == "__main__":
    from conduit.cli import main

    raise SystemExit(main(["serve", "cleanup", *sys.argv[1:]]))
