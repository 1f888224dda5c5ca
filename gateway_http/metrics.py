"""Prometheus metrics of the SSE gateway, registered once in the default registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["EVENTS_SENT", "OPEN_STREAMS", "SKIPPED_ENTRIES"]

OPEN_STREAMS = Gauge(
    "conduit_gateway_open_streams",
    "SSE responses currently streaming.",
)
EVENTS_SENT = Counter(
    "conduit_gateway_events_sent",
    "SSE frames handed to the server for sending, by kind: stream, control, error or keepalive.",
    ["event"],
)
SKIPPED_ENTRIES = Counter(
    "conduit_gateway_skipped_entries",
    "Stream entries that could not be decoded and were not sent.",
)
