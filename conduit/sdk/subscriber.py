"""Async subscriber of the SSE gateway: typed events, resume with Last-Event-ID, stop after END.

::

    async with Subscriber("http://127.0.0.1:8080", token, org_id=1, channel_id=channel_id) as subscriber:
        async for event in subscriber:
            if isinstance(event, StreamEvent) and event.phase == "PHASE_DELTA":
                print(event.payload)

A dropped connection, a response that closes before END (as on a gateway drain)
or a 5xx status is retried with ``Last-Event-ID`` set to the last event seen,
after the gateway's ``retry`` interval. At most ``max_reconnects`` retries may
follow each other without a new event in between. A 4xx status or an ``error``
event raises SubscribeFailed at once. The gateway checks the token only when a
connection opens, so a long-lived subscriber passes ``refresh_token``, which
returns a fresh token before each reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

from conduit.sdk.errors import SubscribeFailed

__all__ = ["ControlEvent", "Event", "SseEvent", "StreamEvent", "Subscriber"]

_MAX_SEEN_MESSAGE_IDS = 2048
_MAX_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched Server-Sent Event, as it came over the wire."""

    event: str
    data: str
    id: str | None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One published message; ``phase`` is the enum name, such as ``"PHASE_DELTA"``."""

    id: str | None
    message_id: str
    channel_id: str
    sequence: int
    phase: str
    payload: dict[str, Any]
    raw: SseEvent = field(repr=False, compare=False)

    @property
    def is_end(self) -> bool:
        """True for END, after which the gateway closes the stream."""
        return self.phase == "PHASE_END"


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A message from the gateway itself, such as ``server_draining`` before a restart."""

    control_type: str
    message_id: str
    raw: SseEvent = field(repr=False, compare=False)


Event = StreamEvent | ControlEvent


class Subscriber:
    """Follows one channel. Iterate it for events; it ends after END. Close it (or use ``async with``)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        org_id: int,
        channel_id: str,
        last_event_id: str | None = None,
        max_reconnects: int = 5,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        refresh_token: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        if max_reconnects < 0:
            raise ValueError(f"max_reconnects must be >= 0, got {max_reconnects}")
        self.url = f"{base_url.rstrip('/')}/events/{org_id}"
        self.channel_id = channel_id
        self.last_event_id = last_event_id
        self.reconnects = 0
        self._token = token
        self._refresh_token = refresh_token
        self._max_reconnects = max_reconnects
        self._connect_timeout_s = connect_timeout_s
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(connect_timeout_s, read=read_timeout_s))
        self._seen: deque[str] = deque(maxlen=_MAX_SEEN_MESSAGE_IDS)

    def __repr__(self) -> str:
        return f"Subscriber(url={self.url!r}, channel_id={self.channel_id!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def events(self) -> AsyncIterator[Event]:
        """Yield typed events until END; messages whose id was already delivered are dropped."""
        # aclosing ends the HTTP response as soon as the caller stops iterating.
        async with contextlib.aclosing(self.raw_events()) as raw_events:
            async for raw in raw_events:
                event = _typed(raw)
                if event is None:
                    continue
                if isinstance(event, StreamEvent):
                    if event.message_id in self._seen:
                        continue
                    self._seen.append(event.message_id)
                yield event

    async def raw_events(self) -> AsyncIterator[SseEvent]:
        """Yield every event as sent, until END, reconnecting as described in the module docstring."""
        params = {"channel_id": self.channel_id, "token": self._token}
        failures = 0
        retry_s = 0.5
        while True:
            headers = {"accept": "text/event-stream"}
            if self.last_event_id:
                headers["last-event-id"] = self.last_event_id
            parser = _SseParser()
            try:
                async with self._client.stream("GET", self.url, params=params, headers=headers) as response:
                    if response.status_code != 200:
                        body = _error_detail((await response.aread()).decode("utf-8", "replace").strip())
                        if response.status_code < 500:
                            raise SubscribeFailed(f"HTTP {response.status_code}", body or response.reason_phrase)
                        reason = f"HTTP {response.status_code}: {body}"
                    else:
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            if event.id:
                                self.last_event_id = event.id
                                failures = 0
                            yield event
                            if event.event == "error":
                                raise SubscribeFailed("gateway error", event.data)
                            if _is_end(event):
                                return
                        reason = "the gateway closed the stream before END"
            except httpx.TransportError as error:
                reason = f"{type(error).__name__}: {error or 'connection lost'}"

            failures += 1
            if failures > self._max_reconnects:
                attempts = "reconnect" if self._max_reconnects == 1 else "reconnects"
                raise SubscribeFailed("gave up", f"{reason} from {self.url} (after {self._max_reconnects} {attempts})")
            self.reconnects += 1
            if parser.retry_ms is not None:
                retry_s = parser.retry_ms / 1000
            await asyncio.sleep(min(retry_s * failures, _MAX_RETRY_S))
            if self._refresh_token is not None:
                params["token"] = await asyncio.wait_for(self._refresh_token(), self._connect_timeout_s)


def _error_detail(body: str) -> str:
    """Return the ``detail`` text of the gateway's JSON error body, or the body as it came."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return body
    return detail if isinstance(detail, str) and detail else body


def _is_end(event: SseEvent) -> bool:
    if event.event != "stream":
        return False
    try:
        return json.loads(event.data).get("phase") == "PHASE_END"
    except (ValueError, AttributeError):
        return False


def _typed(raw: SseEvent) -> Event | None:
    """Decode a ``stream`` or ``control`` event; other events and undecodable data give None."""
    try:
        data = json.loads(raw.data)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if raw.event == "stream":
        return StreamEvent(
            id=raw.id,
            message_id=str(data.get("message_id", "")),
            channel_id=str(data.get("channel_id", "")),
            sequence=int(data.get("sequence", 0)),
            phase=str(data.get("phase", "")),
            payload=data.get("payload") or {},
            raw=raw,
        )
    if raw.event == "control":
        return ControlEvent(
            control_type=str(data.get("control_type", "")), message_id=str(data.get("message_id", "")), raw=raw
        )
    return None


class _SseParser:
    """Incremental parser of the ``text/event-stream`` format, fed one line at a time."""

    def __init__(self) -> None:
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        event = SseEvent(self._event or "message", "\n".join(self._data), self._id) if self._data else None
        self._event, self._data, self._id = "", [], None
        return event
