"""Prometheus metrics of the SSE gateway, registered once in the default registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "ENCODED_ENTRIES",
    "EVENTS_SENT",
    "LAGGING_SUBSCRIBERS",
    "OPEN_STREAMS",
    "REJECTED_CONNECTIONS",
    "SKIPPED_ENTRIES",
]

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
ENCODED_ENTRIES = Counter(
    "conduit_gateway_encoded_entries",
    "Stream entries encoded as SSE frames: once per live entry for all subscribers, once per replayed entry.",
)
LAGGING_SUBSCRIBERS = Counter(
    "conduit_gateway_lagging_subscribers",
    "Subscribers dropped because they fell more than their buffer behind the live stream.",
)
REJECTED_CONNECTIONS = Counter(
    "conduit_gateway_rejected_connections",
    "SSE requests answered 429 because a concurrent connection limit was reached, by limit: ip or token.",
    ["limit"],
)
