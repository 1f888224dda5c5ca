"""Helpers for the hub tests: collecting a subscription's events and reading them back."""

from __future__ import annotations

import asyncio
import json

from gateway_http.events import SseEvent
from gateway_http.feed import Subscription

COLLECT_TIMEOUT_S = 15.0


async def collect(subscription: Subscription, count: int, timeout_s: float = COLLECT_TIMEOUT_S) -> list[SseEvent]:
    """Return at least ``count`` events of ``subscription``; fail after ``timeout_s``."""
    events: list[SseEvent] = []
    async with asyncio.timeout(timeout_s):
        while len(events) < count:
            events.extend(await subscription.next_batch(1))
    return events


async def collect_until_end(subscription: Subscription, timeout_s: float = COLLECT_TIMEOUT_S) -> list[SseEvent]:
    """Return the events of ``subscription`` up to and including the END; fail after ``timeout_s``."""
    events: list[SseEvent] = []
    async with asyncio.timeout(timeout_s):
        while not events or not events[-1].is_end:
            events.extend(await subscription.next_batch(1))
    return events


def sequences(events: list[SseEvent]) -> list[int]:
    """Return the ``sequence`` of each stream event, in order."""
    return [json.loads(data_line(event))["sequence"] for event in events if event.kind == "stream"]


def data_line(event: SseEvent) -> str:
    """Return the JSON text of the event's ``data:`` line."""
    for line in event.frame.decode().split("\n"):
        if line.startswith("data: "):
            return line.removeprefix("data: ")
    raise AssertionError(f"no data line in {event.frame!r}")
