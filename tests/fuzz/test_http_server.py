"""The shared HTTP listener: settings on its socket that every HTTP case depends on."""

from __future__ import annotations

import socket

from litestar import Litestar

from conduit.http_server import HttpServer


async def test_http_server_socket_enables_tcp_nodelay() -> None:
    server = HttpServer(Litestar(route_handlers=[]), "127.0.0.1", 0, name="nodelay-test")
    await server.start()
    try:
        listener = server._socket
        assert listener is not None
        # asyncio turns TCP_NODELAY on for accepted sockets only when their protocol is
        # IPPROTO_TCP, and accepted sockets copy it from the listener. Without it each
        # response on a kept-alive connection waits for the client's delayed ACK.
        assert listener.proto == socket.IPPROTO_TCP
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
    finally:
        await server.stop(grace_s=0)
