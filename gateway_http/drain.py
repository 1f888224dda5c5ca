"""The count of open SSE streams and the signal for them to close at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Drain", "DrainListener"]


class DrainListener(Protocol):
    """An open stream that hears of the drain without a task of its own waiting for it."""

    def drain_started(self) -> None:
        """Called once when the drain starts; must not block."""


class Drain:
    """Counts open SSE streams and broadcasts the start of a drain to them.

    A stream wraps its lifetime in ``track()`` (or ``stream_opened()`` and
    ``stream_closed()``) and either registers with
    ``add_listener()`` or waits in ``wait_draining()``; the server calls ``start()`` on shutdown and then ``wait_closed()``.
    """

    def __init__(self) -> None:
        self._open_count = 0
        self._draining = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._listeners: set[DrainListener] = set()

    @property
    def is_draining(self) -> bool:
        """True once ``start()`` was called; readiness reports 503 from then on."""
        return self._draining.is_set()

    @property
    def open_count(self) -> int:
        """Number of SSE streams open now."""
        return self._open_count

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one open stream for the duration of the ``with`` block."""
        self.stream_opened()
        try:
            yield
        finally:
            self.stream_closed()

    def stream_opened(self) -> None:
        """Count one more open stream; each call needs one ``stream_closed`` later."""
        self._open_count += 1
        self._all_closed.clear()

    def stream_closed(self) -> None:
        """Count one open stream fewer."""
        self._open_count -= 1
        if self._open_count == 0:
            self._all_closed.set()

    async def wait_draining(self) -> None:
        """Return once a drain has started, at once if it already has."""
        await self._draining.wait()

    def add_listener(self, listener: DrainListener) -> None:
        """Call ``listener.drain_started()`` when the drain starts; the caller checks ``is_draining`` first."""
        self._listeners.add(listener)

    def remove_listener(self, listener: DrainListener) -> None:
        """Forget ``listener``; safe when it was never added."""
        self._listeners.discard(listener)

    def start(self) -> None:
        """Tell every open stream, and every stream that opens from now on, to close."""
        if self._draining.is_set():
            return
        self._draining.set()
        for listener in list(self._listeners):
            listener.drain_started()

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every tracked stream to close; return whether they all did."""
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
