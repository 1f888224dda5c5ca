"""Run an ASGI app under uvicorn inside an event loop that other servers share.

uvicorn's own ``serve()`` installs signal handlers and re-raises the signal when
it returns, which would end a process that also runs a gRPC server or a second
app. Here the caller owns signals and shutdown. The socket is bound before
serving starts, so the real port is known at once, even for port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
from collections.abc import Iterator

import uvicorn
from litestar.types import ASGIApp

__all__ = ["HttpServer", "bind_error", "bind_listening_socket", "enable_port_sharing", "port_sharing_enabled"]

logger = logging.getLogger(__name__)

_port_sharing = False


def enable_port_sharing() -> None:
    """Bind every later server socket of this process with SO_REUSEPORT.

    A worker process calls this before it starts its servers, so that the
    workers of one role listen on the same ports and the kernel spreads new
    connections across them. It is per process, because all servers of a
    worker share its ports alike.
    """
    global _port_sharing
    _port_sharing = True


def port_sharing_enabled() -> bool:
    """Tell whether ``enable_port_sharing`` was called in this process."""
    return _port_sharing


def bind_error(name: str, host: str, port: int, error: OSError, port_setting: str | None) -> OSError:
    """Return the error for a failed bind of ``host:port``, naming ``port_setting`` when the port is in use."""
    message = f"{name}: cannot bind {host}:{port}: {error.strerror}"
    if error.errno == errno.EADDRINUSE and port_setting is not None:
        message += f"; choose another port with {port_setting}"
    return OSError(message)


def bind_listening_socket(host: str, port: int, *, name: str, port_setting: str | None = None) -> socket.socket:
    """Bind a non-blocking TCP socket to ``host:port`` and listen; raise OSError naming the address.

    ``port_setting`` names the variable and flag that choose the port, for
    example ``GATEWAY_PORT or --gateway-port``. The error for a port in use
    includes it, so the user knows which setting to change.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP makes asyncio set TCP_NODELAY on each accepted connection. With
    # protocol 0 it does not, and every response on a reused connection waits
    # about 40 ms for the client's delayed ACK (Nagle's algorithm).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if _port_sharing:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise bind_error(name, host, port, error, port_setting) from error
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process entry point owns SIGINT and SIGTERM.
        yield


def _protocol_without_access_log() -> type[asyncio.Protocol]:
    """Return uvicorn's HTTP protocol class with its access log line turned off."""
    try:
        import httptools  # noqa: F401

        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class WithoutAccessLog(Base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.access_log = False

    return WithoutAccessLog


class HttpServer:
    """One uvicorn server bound to ``host:port``, started and stopped by its owner."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        name: str,
        port_setting: str | None = None,
        shutdown_timeout_s: float = 10,
        access_log: bool = True,
    ) -> None:
        """Configure the server; ``access_log=False`` drops uvicorn's line per request."""
        self.name = name
        self._port_setting = port_setting
        self._host = host
        self._requested_port = port
        self._config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,
            access_log=True,
            server_header=False,
            timeout_graceful_shutdown=int(shutdown_timeout_s),
            # uvloop and httptools are used when installed, the standard ones otherwise.
            loop="none",
        )
        if not access_log:
            # uvicorn's access_log=False silences the access logger of every
            # server in the process, so only this server's protocol drops it.
            self._config.http = _protocol_without_access_log()
        self._server = _Server(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """Port actually bound; differs from the requested one when that was 0."""
        if self._socket is None:
            raise RuntimeError(f"{self.name} server is not started")
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        """Bind the socket and begin serving in a task that this object owns."""
        sock = bind_listening_socket(
            self._host, self._requested_port, name=self.name, port_setting=self._port_setting
        )
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"{self.name}-http")
        logger.info("%s listening", self.name, extra={"host": self._host, "port": self.port})

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let open requests finish within the grace period, then close.

        ``grace_s`` is rounded up to whole seconds, as uvicorn takes them, and
        defaults to the ``shutdown_timeout_s`` given at construction.
        """
        if self._task is None:
            return
        if grace_s is not None:
            self._config.timeout_graceful_shutdown = max(0, math.ceil(grace_s))
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._config.timeout_graceful_shutdown + 5)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            if self._socket is not None:
                self._socket.close()
            self._task = None
