"""Live SSE frames written straight to uvicorn's transport, one syscall and no ASGI message per subscriber.

The hub's reader hands one event list to every subscriber of a channel in
one pass. Through ASGI, each subscriber then costs a message dict, a ``send``
coroutine, uvicorn's checks and the chunk framing, about 1.5 µs of CPU on
top of the write syscall. Here the chunk is framed once per list and
written with ``transport.write``, as uvicorn's ``send`` would, and the
``events_sent`` counter takes one increment per list.

It works only under uvicorn's httptools protocol (``RequestResponseCycle``
of ``uvicorn.protocols.http.httptools_impl``, whose attributes it reads as
uvicorn 0.55 defines them) while a chunked response is streaming and the
transport takes writes. In every other case ``write_live`` returns False and
the caller sends through ASGI, so the bytes on the wire are the same either
way. ``tests/gateway_http/test_direct_write.py`` compares both with the
installed uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway_http.events import SseEvent
from gateway_http.metrics import EVENTS_SENT

__all__ = ["frame_live", "release_request_url", "streaming_transport", "uvicorn_cycle", "write_live"]

try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as _HttptoolsCycle
except ImportError:  # uvicorn without httptools: every stream uses ASGI
    _HttptoolsCycle = None

logger = logging.getLogger(__name__)

_STREAM_SENT = EVENTS_SENT.labels("stream")


class _LiveChunk:
    """The HTTP chunk of the newest event list, and the sends of it not yet counted in the metric.

    One entry suffices, because a reader's pass hands the same list to every
    subscriber before the next list exists. It keeps a reference to that
    list, so its identity cannot be reused while it is remembered.
    """

    __slots__ = ("_batch", "_chunk", "_flush_loop", "_length", "_uncounted")

    def __init__(self) -> None:
        self._batch: list[SseEvent] | None = None
        self._length = 0
        self._chunk: bytes | None = None
        self._uncounted = 0
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def chunk(self, batch: list[SseEvent]) -> bytes | None:
        """Return ``batch`` framed as one HTTP chunk; None when it contains a control event or the END."""
        if batch is self._batch and len(batch) == self._length:
            return self._chunk
        chunk: bytes | None = None
        if all(event.kind == "stream" and not event.is_end for event in batch):
            body = batch[0].frame if len(batch) == 1 else b"".join(event.frame for event in batch)
            chunk = b"%x\r\n%b\r\n" % (len(body), body)
        self._batch, self._length, self._chunk = batch, len(batch), chunk
        return chunk

    def count(self, events: int) -> None:
        """Add ``events`` to the ``events_sent`` metric once the current loop pass ends."""
        # get_running_loop costs a getpid() system call on Python 3.11, so it
        # runs once per pass, not once per subscriber. A flush scheduled on a
        # loop that was closed before running it (in tests) never runs, so a
        # closed loop's flush counts as not scheduled.
        pending = self._flush_loop
        if pending is None or pending.is_closed():
            loop = asyncio.get_running_loop()
            self._flush_loop = loop
            loop.call_soon(self._flush)
        self._uncounted += events

    def _flush(self) -> None:
        self._flush_loop = None
        uncounted, self._uncounted = self._uncounted, 0
        _STREAM_SENT.inc(uncounted)


_live_chunk = _LiveChunk()


def uvicorn_cycle(send: object) -> Any | None:
    """Return the uvicorn httptools response behind ``send``; None when ``send`` is another server's.

    Callers keep the response itself rather than a wrapper, because a gateway
    keeps one per open stream.
    """
    cycle = getattr(send, "__self__", None)
    if _HttptoolsCycle is None or type(cycle) is not _HttptoolsCycle:
        return None
    return cycle


def release_request_url(cycle: Any) -> None:
    """Drop the request URL that uvicorn's protocol keeps until the connection's next request.

    A stream stays open for as long as its subscriber watches, and its URL
    carries the subscriber's token, about 0.7 KB that the stream no longer
    needs. Does nothing where the transport or protocol lacks what uvicorn
    0.55 on uvloop or asyncio has (``get_protocol``, a bytes ``url``).
    """
    get_protocol = getattr(getattr(cycle, "transport", None), "get_protocol", None)
    protocol = get_protocol() if get_protocol is not None else None
    if isinstance(getattr(protocol, "url", None), bytes):
        protocol.url = b""


def frame_live(batch: list[SseEvent]) -> bytes | None:
    """Return ``batch`` as the HTTP chunk that ``write_live`` writes; None when ``write_live`` would decline it."""
    return _live_chunk.chunk(batch)


def streaming_transport(cycle: Any) -> asyncio.WriteTransport | None:
    """Return ``cycle``'s transport when ``write_live`` would write to it now; else None.

    The hub writes ``frame_live``'s chunks to this transport itself while it
    has nothing buffered, which implies that flow control does not pause it.
    Those writes bypass the ``events_sent`` count here; the hub counts them.
    """
    return cycle.transport if _streaming(cycle) else None


def _streaming(cycle: Any) -> bool:
    """Return True when uvicorn's ``send`` would write a body chunk to ``cycle``'s transport at once."""
    global _HttptoolsCycle
    if _HttptoolsCycle is None:
        return False
    try:
        return not (
            cycle.flow.write_paused
            or cycle.disconnected
            or not cycle.response_started
            or cycle.response_complete
            or cycle.chunked_encoding is not True
        )
    except AttributeError:
        # Another uvicorn release without these attributes: from now on every
        # stream of this process sends through ASGI.
        logger.warning("uvicorn's response lacks the attributes of 0.55; live events go through ASGI")
        _HttptoolsCycle = None
        return False


def write_live(cycle: Any, batch: list[SseEvent]) -> bool:
    """Write ``batch`` to ``cycle``'s transport now and return True; return False to leave it to the ASGI ``send``.

    Declines a batch with a control event or the END. Also declines any write
    that uvicorn's ``send`` would not make at once: before the response
    start, after its end, while flow control pauses writing, after a
    disconnect, and for a response without chunked encoding. Raises what
    ``transport.write`` raises. A uvicorn whose response lacks the attributes
    read here turns the direct path off for the whole process.
    """
    if not _streaming(cycle):
        return False
    chunk = _live_chunk.chunk(batch)
    if chunk is None:
        return False
    cycle.transport.write(chunk)
    _live_chunk.count(len(batch))
    return True
