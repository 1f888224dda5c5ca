"""Pre-packed commands on a Redis connection that the caller owns, each exchange under one deadline.

redis-py times every write of a connection with a socket timeout in a task
of its own (``asyncio.wait_for`` on Python 3.11) and every reply in its own
timeout. A caller that sends command after command on its own connection,
such as the append batch task or the gateway's stream reader, instead gets
a connection without a socket timeout (``owned_connection``) and bounds
each whole exchange by one deadline (``exchange``).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["exchange", "owned_connection"]


def owned_connection(client: Redis) -> tuple[Connection, float | None]:
    """Return a new connection for a caller that sends command after command, and the deadline for each exchange.

    The connection is made with the client pool's settings but outside the
    pool, and without a socket timeout. ``exchange`` then bounds each
    exchange by one deadline, the pool's socket timeout. The caller
    disconnects the connection when done, and it comes on top of the pool's
    ``max_connections``.
    """
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": None}
    return pool.connection_class(**kwargs), pool.connection_kwargs.get("socket_timeout")


async def exchange(connection: Connection, command: list[bytes], reply_count: int, timeout_s: float | None) -> list[Any]:
    """Send ``command`` (packed) and return its ``reply_count`` replies, all within ``timeout_s``.

    A reply that is a Redis error takes its place as a ``ResponseError``.
    Past the deadline it raises redis-py's TimeoutError, as a socket timeout
    would. A failed or cancelled exchange disconnects the connection, so no
    unread reply reaches the next exchange; the next send reconnects.
    """
    replies: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            # The connection is in use for the whole exchange, so a health check before it would only add a call.
            await connection.send_packed_command(command, check_health=False)
            for _ in range(reply_count):
                try:
                    # math.inf turns off redis-py's timeout per reply (redis-py 8.2); the deadline above covers them all.
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as error:
                    replies.append(error)
    except TimeoutError:
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout after {timeout_s:g} s waiting for {reply_count} replies") from None
    except BaseException:
        # read_response already disconnects on its own failures. This covers
        # the rest, so the replies still on the socket are dropped with it.
        await connection.disconnect(nowait=True)
        raise
    return replies
