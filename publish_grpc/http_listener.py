"""The publish HTTP port: a listening socket served by ``PublishHttpProtocol``.

It replaces uvicorn on this port, whose per-request ASGI machinery cost more
CPU than the publish itself. Graceful stop works as uvicorn's did: stop
accepting, close idle connections, let requests in flight finish within the
grace period, then cancel what is left and close every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

from litestar.types import ASGIApp

from conduit.http_server import bind_listening_socket
from conduit.settings import PORT_SETTINGS
from publish_grpc.http_protocol import HttpShimContext, PublishHttpProtocol
from publish_grpc.publisher import Publisher

__all__ = ["ACCEPT_RETRY_DELAY_S", "IDLE_TIMEOUT_S", "MAX_HEAD_BYTES", "PublishHttpServer"]

logger = logging.getLogger(__name__)

_BACKLOG = 2048
# accept() errors that last until a descriptor, buffer or memory frees up, as asyncio's servers treat them.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

IDLE_TIMEOUT_S = 5.0
"""Time a connection may stay open without a request in progress: uvicorn's keep-alive default."""

MAX_HEAD_BYTES = 64 * 1024
"""Cap on the request line plus headers of one request; a larger head gets 431 and the connection closes."""

ACCEPT_RETRY_DELAY_S = 1.0
"""Pause in accepting after the process or the system ran out of file descriptors or buffers. asyncio's own servers (Python 3.11) pause as long."""



class PublishHttpServer:
    """The HTTP shim of the publish service, started and stopped by its owner."""

    def __init__(
        self,
        publisher: Publisher,
        fallback: ASGIApp,
        host: str,
        port: int,
        *,
        body_read_timeout_s: float,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_head_bytes: int = MAX_HEAD_BYTES,
        accept_retry_delay_s: float = ACCEPT_RETRY_DELAY_S,
    ) -> None:
        self._publisher = publisher
        self._fallback = fallback
        self._host = host
        self._requested_port = port
        self._body_read_timeout_s = body_read_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._max_head_bytes = max_head_bytes
        self._accept_retry_delay_s = accept_retry_delay_s
        self._accept_retry: asyncio.TimerHandle | None = None
        self._context: HttpShimContext | None = None
        self._connecting: set[asyncio.Task[None]] = set()
        self._socket: socket.socket | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """Port actually bound; differs from the requested one when that was 0."""
        if self._socket is None:
            raise RuntimeError("publish server is not started")
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        """Bind the socket and begin accepting; raise OSError when the address is taken."""
        context = HttpShimContext(
            self._publisher,
            self._fallback,
            body_read_timeout_s=self._body_read_timeout_s,
            max_head_bytes=self._max_head_bytes,
        )
        sock = bind_listening_socket(
            self._host, self._requested_port, name="publish", port_setting=PORT_SETTINGS["publish_port"]
        )
        self._context = context
        self._socket = sock
        # A reader callback rather than loop.create_server: on Python 3.11, a
        # connection that asyncio accepted just before Server.close() fails an
        # assertion in Server._attach, and its socket is never closed.
        asyncio.get_running_loop().add_reader(sock, self._accept_connections, sock, context)
        self._sweeper = asyncio.create_task(self._close_idle_connections(context), name="publish-http-idle")
        logger.info("publish listening", extra={"host": self._host, "port": self.port})

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let open requests finish within ``grace_s``, then close every connection."""
        context, sock = self._context, self._socket
        if context is None or sock is None or context.stopping:
            return
        context.stopping = True
        asyncio.get_running_loop().remove_reader(sock)
        if self._accept_retry is not None:
            self._accept_retry.cancel()
            self._accept_retry = None
        sock.close()
        if self._connecting:
            await asyncio.wait(list(self._connecting), timeout=grace_s)
        for connection in list(context.connections):
            connection.shutdown()
        await self._wait_until_closed(context, grace_s)

        for connection in list(context.connections):
            connection.reject_unfinished_body()
        for task in list(context.tasks):
            task.cancel()
        if context.tasks:
            await asyncio.wait(list(context.tasks), timeout=1)
        for connection in list(context.connections):
            connection.abort()
        # Let the transports run connection_lost, which closes their sockets.
        await self._wait_until_closed(context, 1)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._socket = None

    def _accept_connections(self, sock: socket.socket, context: HttpShimContext) -> None:
        """Accept every pending connection and start its transport, in a task that stop() awaits."""
        for _ in range(_BACKLOG):
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                # The client reset the connection while it was queued; the next one may be fine.
                continue
            except OSError as error:
                if error.errno not in _RESOURCE_ERRNOS:
                    # An error of that one connection, such as EPROTO or EPERM from a firewall.
                    logger.info("publish HTTP: accept failed: %s", error)
                    continue
                # The listening socket stays readable while resources are short, so
                # accepting again at once would spin. The connections wait in the backlog.
                logger.warning(
                    "publish HTTP: accept failed; pausing accepting for %g s: %s", self._accept_retry_delay_s, error
                )
                self._pause_accepting(sock, context)
                return
            task = asyncio.create_task(self._connect(connection, context))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _pause_accepting(self, sock: socket.socket, context: HttpShimContext) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock)
        self._accept_retry = loop.call_later(self._accept_retry_delay_s, self._resume_accepting, sock, context)

    def _resume_accepting(self, sock: socket.socket, context: HttpShimContext) -> None:
        self._accept_retry = None
        if not context.stopping:
            asyncio.get_running_loop().add_reader(sock, self._accept_connections, sock, context)

    @staticmethod
    async def _connect(connection: socket.socket, context: HttpShimContext) -> None:
        try:
            connection.setblocking(False)
            # Without it, every response on a reused connection waits about
            # 40 ms for the client's delayed ACK (Nagle's algorithm).
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().connect_accepted_socket(lambda: PublishHttpProtocol(context), connection)
        except OSError as error:
            logger.info("publish HTTP: dropped a connection that failed on accept: %s", error)
            connection.close()

    @staticmethod
    async def _wait_until_closed(context: HttpShimContext, timeout_s: float) -> None:
        if context.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(context.all_closed.wait(), timeout_s)

    async def _close_idle_connections(self, context: HttpShimContext) -> None:
        # One pass a second instead of a timer per request: a connection may stay
        # up to a second past the idle timeout.
        loop = asyncio.get_running_loop()
        interval_s = min(1.0, self._idle_timeout_s / 2)
        while True:
            await asyncio.sleep(interval_s)
            now = loop.time()
            for connection in list(context.connections):
                connection.close_if_idle(now, self._idle_timeout_s)
