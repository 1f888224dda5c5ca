"""Encoding of broker entries into SSE events, with the metrics and logs around it.

Undecodable entries are skipped: each is counted, and warnings are limited to
one per interval so a stream full of foreign entries cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from broker.base import Entry
from broker.keys import stream_log_fields
from gateway_http.events import SseEvent, UndecodableEntry, encode_entry
from gateway_http.metrics import ENCODED_ENTRIES, SKIPPED_ENTRIES

__all__ = ["encode_entries"]

logger = logging.getLogger(__name__)

_SKIPPED_LOG_INTERVAL_S = 10.0


def encode_entries(entries: Sequence[Entry], stream: str) -> list[SseEvent]:
    """Encode the entries of ``stream`` in order, leaving out those that are not forwardable PublishRequests."""
    ENCODED_ENTRIES.inc(len(entries))
    events = []
    for entry in entries:
        try:
            events.append(encode_entry(entry))
        except UndecodableEntry as error:
            SKIPPED_ENTRIES.inc()
            _skipped_entry_log.warn(entry_id=entry.id, error=str(error), **stream_log_fields(stream))
    return events


class _ThrottledWarning:
    """Logs at most one WARNING per interval and counts the ones held back."""

    def __init__(self, message: str, interval_s: float) -> None:
        self._message = message
        self._interval_s = interval_s
        self._next_log_at = 0.0
        self._held_back = 0

    def warn(self, **fields: object) -> None:
        now = time.monotonic()
        if now < self._next_log_at:
            self._held_back += 1
            return
        logger.warning(self._message, extra={**fields, "held_back": self._held_back})
        self._held_back = 0
        self._next_log_at = now + self._interval_s


_skipped_entry_log = _ThrottledWarning("skipping undecodable stream entry", _SKIPPED_LOG_INTERVAL_S)
