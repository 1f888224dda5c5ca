"""A raw-socket SSE client for hostile gateway tests: it parses HTTP/1.1 chunking itself and can stop reading."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.gateway_http.helpers import ORG_ID


@dataclass
class SseFrame:
    """One SSE frame as the client saw it."""

    raw: bytes
    event: str | None
    entry_id: str | None
    data: dict[str, object] | None

    @property
    def sequence(self) -> int | None:
        """The ``sequence`` of a stream event's data; None for other frames."""
        value = None if self.data is None else self.data.get("sequence")
        return value if isinstance(value, int) else None


@dataclass
class RawSseClient:
    """An SSE connection over a plain socket with a small receive buffer, read only when the test calls ``read_some``."""

    port: int
    token: str
    channel_id: str
    last_event_id: str | None = None
    receive_buffer: int = 4096
    frames: list[SseFrame] = field(default_factory=list)
    ended: bool = False
    _sock: socket.socket | None = None
    _raw: bytes = b""
    _body: bytes = b""
    _headers_done: bool = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        self._sock = sock
        headers = "Host: test\r\n"
        if self.last_event_id is not None:
            headers += f"Last-Event-ID: {self.last_event_id}\r\n"
        request = f"GET /events/{ORG_ID}?token={self.token}&channel_id={self.channel_id} HTTP/1.1\r\n{headers}\r\n"
        await loop.sock_sendall(sock, request.encode())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def abort(self) -> None:
        """Close with a TCP reset, as a client that vanishes does."""
        if self._sock is not None:
            # SO_LINGER on with a zero timeout makes close() send RST.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close()

    async def read_some(self, max_bytes: int = 65536, timeout_s: float = 5) -> bool:
        """Read once and parse what arrived; return False at the end of the connection."""
        assert self._sock is not None
        async with asyncio.timeout(timeout_s):
            data = await asyncio.get_running_loop().sock_recv(self._sock, max_bytes)
        if not data:
            self.ended = True
            return False
        self._raw += data
        self._parse()
        return not self.ended

    async def read_until(self, condition: Callable[[RawSseClient], bool], timeout_s: float = 10) -> None:
        """Read until ``condition(self)`` is true or the response ends; fail after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not condition(self):
                if self.ended or not await self.read_some(timeout_s=timeout_s):
                    return

    def stream_frames(self) -> list[SseFrame]:
        return [frame for frame in self.frames if frame.event == "stream"]

    def sequences(self) -> list[int | None]:
        return [frame.sequence for frame in self.stream_frames()]

    def _parse(self) -> None:
        if not self._headers_done:
            head, found, rest = self._raw.partition(b"\r\n\r\n")
            if not found:
                return
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"transfer-encoding: chunked" in head.lower(), head
            self._headers_done = True
            self._raw = rest
        while True:
            size_line, found, rest = self._raw.partition(b"\r\n")
            if not found:
                return
            size = int(size_line, 16)  # a corrupt chunk header raises here
            if len(rest) < size + 2:
                return
            chunk, trailer, self._raw = rest[:size], rest[size : size + 2], rest[size + 2 :]
            assert trailer == b"\r\n", (trailer, chunk[-40:])
            if size == 0:
                self.ended = True
                return
            self._body += chunk
            while b"\n\n" in self._body:
                frame, _, self._body = self._body.partition(b"\n\n")
                self.frames.append(parse_frame(frame + b"\n\n"))


def parse_frame(raw: bytes) -> SseFrame:
    """Parse one SSE frame; a comment line such as ``: keep-alive`` makes it a frame of event ``comment``."""
    event = entry_id = None
    data = None
    for line in raw.decode().split("\n"):
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("id: "):
            entry_id = line.removeprefix("id: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif line.startswith(":"):
            event = "comment"
    return SseFrame(raw=raw, event=event, entry_id=entry_id, data=data)
