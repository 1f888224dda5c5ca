"""Clients for the fault tests: an SSE subscriber that records every event, and publishing over HTTP.

The subscriber speaks only the public protocol (``GET /events/{org_id}`` with
``Last-Event-ID``), so the tests hold whatever feed the gateway uses inside.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from conduit.v1alpha import publish_pb2

ORG_ID = 321
ISSUER = "fault-tests"
PUBLISH_AUDIENCE = "conduit-publish"
GATEWAY_AUDIENCE = "conduit-gateway"
PUBLISH_SECRET = "fault-tests-publish-secret-0123456789abcdef"
# Fault tests publish much faster than the default 20 per second per channel.
RATE_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched Server-Sent Event; ``data`` is the parsed JSON of its data line."""

    event: str
    id: str | None
    data: dict[str, Any]


@dataclass
class Connection:
    """What one HTTP response of a subscriber carried."""

    url: str
    last_event_id: str | None
    status_code: int | None = None
    events: list[SseEvent] = field(default_factory=list)
    ended_by_server: bool = False


class Subscriber:
    """Follows one channel until its END entry, reconnecting with Last-Event-ID after a drain.

    ``urls`` lists the gateways to use in turn: the first connection goes to
    ``urls[0]``, each reconnection to the next one (the last one is reused).
    A connection that ends with an ``error`` event is not retried, so tests see it.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        urls: list[str],
        *,
        channel_id: str,
        token: str,
        max_connections: int = 3,
        last_event_id: str | None = None,
    ) -> None:
        self._client = client
        self._urls = urls
        self._params = {"token": token, "channel_id": channel_id}
        self._max_connections = max_connections
        self._first_last_event_id = last_event_id
        self.channel_id = channel_id
        self.connections: list[Connection] = []
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(), name=f"subscriber-{channel_id}")

    @property
    def events(self) -> list[SseEvent]:
        """Every event of every connection, in the order received."""
        return [event for connection in self.connections for event in connection.events]

    @property
    def stream_events(self) -> list[SseEvent]:
        return [event for event in self.events if event.event == "stream"]

    def events_of(self, kind: str) -> list[SseEvent]:
        return [event for event in self.events if event.event == kind]

    async def _run(self) -> None:
        last_event_id = self._first_last_event_id
        for attempt in range(self._max_connections):
            url = self._urls[min(attempt, len(self._urls) - 1)]
            connection = Connection(url, last_event_id)
            self.connections.append(connection)
            await self._read(connection)
            stream = [event for event in connection.events if event.event == "stream"]
            if stream:
                last_event_id = stream[-1].id
            if connection.status_code != 200 or any(event.event == "error" for event in connection.events):
                return
            if stream and stream[-1].data["phase"] == "PHASE_END":
                return
            if not any(event.event == "control" for event in connection.events):
                return

    async def _read(self, connection: Connection) -> None:
        headers = {"last-event-id": connection.last_event_id} if connection.last_event_id else {}
        async with self._client.stream("GET", connection.url, params=self._params, headers=headers) as response:
            connection.status_code = response.status_code
            self.connected.set()
            if response.status_code != 200:
                await response.aread()
                return
            event: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    event[name] = value.removeprefix(" ")
                    continue
                if "data" in event:
                    connection.events.append(
                        SseEvent(event.get("event", "message"), event.get("id"), json.loads(event["data"]))
                    )
                event = {}
            connection.ended_by_server = True


def delta_request(channel_id: str, sequence: int, *, phase: int = publish_pb2.PHASE_DELTA,
                  payload: dict[str, Any] | None = None) -> publish_pb2.PublishRequest:
    """Build a PublishRequest with a fresh message_id."""
    request = publish_pb2.PublishRequest(
        channel_id=channel_id, message_id=str(uuid.uuid4()), phase=phase, sequence=sequence, org_id=ORG_ID
    )
    request.client_timestamp.GetCurrentTime()
    request.payload.update(payload if payload is not None else {"sequence": sequence})
    return request


async def post_publish(client: httpx.AsyncClient, base_url: str, request: publish_pb2.PublishRequest,
                       token: str, *, timeout_s: float) -> httpx.Response:
    """POST one message to the HTTP shim and return the response, whatever its status."""
    return await client.post(
        f"{base_url}/publish/{ORG_ID}/{request.channel_id}",
        content=request.SerializeToString(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/x-protobuf"},
        timeout=timeout_s,
    )


def open_fd_count() -> int:
    """Number of file descriptors this process has open (Linux)."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc/<pid>/status (Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS line for process {pid}")


def metric_value(metrics_text: str, name: str) -> float:
    """Return the value of the sample ``name`` (with its labels, if any) in Prometheus text; fail when it is missing."""
    for line in metrics_text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not found in /metrics")
