"""Metrics and logs for every publish, recorded at the front doors.

Each front door wraps one publish in ``PublishAttempt``, which times it, counts
its outcome and logs a rejection. Accepted publishes are counted, not logged:
one line per message would drown everything else at the rates publishers send.
"""

from __future__ import annotations

import logging
import time
import uuid
from types import TracebackType
from typing import Literal

from google.protobuf.message import DecodeError

from conduit.errors import (
    BrokerUnavailable,
    ConduitError,
    InvalidArgument,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from conduit.v1alpha.publish_pb2 import PublishRequest
from publish_grpc.publish_metrics import PUBLISH_METRICS, PublishSeries
from publish_grpc.validation import ValidatedPublish, describe_value

__all__ = ["FrontDoor", "PublishAttempt", "outcome_of"]

logger = logging.getLogger(__name__)

FrontDoor = Literal["grpc", "http"]

_OUTCOMES: dict[type[ConduitError], str] = {
    InvalidArgument: "invalid_argument",
    Unauthenticated: "unauthenticated",
    PermissionDenied: "permission_denied",
    PayloadTooLarge: "payload_too_large",
    RateLimited: "rate_limited",
    BrokerUnavailable: "broker_unavailable",
}

# Rejection lines are limited per window, because a misbehaving publisher can
# send thousands a second; the metrics still count every one.
_LOG_WINDOW_S = 10.0
_LOG_LINES_PER_WINDOW = 20
# Length of the canonical hyphenated UUID form.
_UUID_LENGTH = 36


def _org_id_field(raw: str) -> int | str:
    # 20 digits cover every uint64, and keep int() away from its digit limit.
    if raw.isascii() and raw.isdigit() and len(raw) <= 20:
        return int(raw)
    return describe_value(raw)


def _uuid_field(raw: str) -> str:
    if len(raw) == _UUID_LENGTH:
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            pass
    return describe_value(raw)


def outcome_of(error: BaseException) -> str:
    """Return the metric label for how a publish that raised ``error`` ended."""
    for error_class, outcome in _OUTCOMES.items():
        if isinstance(error, error_class):
            return outcome
    return "internal"


class _RejectionLogLimiter:
    """Allow a bounded number of log lines per window and count the ones it drops."""

    def __init__(self) -> None:
        self._window_started = 0.0
        self._lines_in_window = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._window_started >= _LOG_WINDOW_S:
            self._window_started = now
            self._lines_in_window = 0
        if self._lines_in_window >= _LOG_LINES_PER_WINDOW:
            self.suppressed += 1
            return False
        self._lines_in_window += 1
        return True


# One limiter per level, so a flood of bad requests cannot hide broker warnings.
_limiters = {logging.INFO: _RejectionLogLimiter(), logging.WARNING: _RejectionLogLimiter()}


class PublishAttempt:
    """Context manager around one publish: duration, outcome counter, rejection log.

    ``note_*`` record the ids known so far, so a rejection is logged with as
    many of org_id, channel_id and message_id as the request got to carry.
    The exception leaves the block unchanged, and each front door turns it into its response.
    """

    def __init__(self, front_door: FrontDoor) -> None:
        self.front_door = front_door
        # The raw ids are kept and formatted only for a log line, because
        # most publishes are accepted and never logged.
        self._path: tuple[str, str] | None = None
        self._request: PublishRequest | None = None
        self._publish: ValidatedPublish | None = None
        self._started = 0.0
        self._series: PublishSeries | None = None

    def note_path(self, org_id: str, channel_id: str) -> None:
        """Record the ids of an HTTP path before they are validated: well-formed ones as values, others quoted."""
        self._path = (org_id, channel_id)

    def note_request(self, request: PublishRequest) -> None:
        """Record the ids of a decoded request before they are validated: well-formed ones as values, others quoted."""
        self._request = request

    def _ids(self) -> dict[str, object]:
        """Return the ids noted so far as log fields; later notes win over earlier ones."""
        if self._publish is not None:
            return {
                "org_id": self._publish.org_id,
                "channel_id": self._publish.channel_id,
                "message_id": self._publish.message_id,
            }
        ids: dict[str, object] = {}
        if self._path is not None:
            ids["org_id"] = _org_id_field(self._path[0])
            ids["channel_id"] = _uuid_field(self._path[1])
        request = self._request
        if request is not None:
            if request.org_id:
                ids["org_id"] = request.org_id
            if request.channel_id:
                ids["channel_id"] = _uuid_field(request.channel_id)
            ids["message_id"] = _uuid_field(request.message_id)
        return ids

    def note_body(self, data: bytes) -> None:
        """Record the ids of an encoded request when it decodes; for rejections that come before decoding."""
        try:
            request = PublishRequest.FromString(data)
        except DecodeError:
            return
        self.note_request(request)

    def note_publish(self, publish: ValidatedPublish) -> None:
        """Record the validated ids."""
        self._publish = publish

    def __enter__(self) -> PublishAttempt:
        self.start()
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish(error)

    def start(self) -> None:
        """Start timing and count the publish as in flight, as entering the block does."""
        self._started = time.perf_counter()
        self._series = series = PUBLISH_METRICS.series(self.front_door)
        series.in_flight += 1

    def finish(self, error: BaseException | None) -> None:
        """Record the outcome, accepted when ``error`` is None, as leaving the block does.

        This is for callers that cannot wrap a publish in one block, such as
        a batch of them. Call it once per ``start``.
        """
        duration_s = time.perf_counter() - self._started
        series = self._series or PUBLISH_METRICS.series(self.front_door)

        if error is None:
            series.observe(duration_s, "accepted")
            return
        if not isinstance(error, Exception):
            # Cancelled: the caller went away or the server is stopping.
            series.observe(duration_s, "cancelled")
            return

        outcome = outcome_of(error)
        series.observe(duration_s, outcome)
        if outcome == "internal":
            logger.error("publish failed", exc_info=error, extra={"front_door": self.front_door, **self._ids()})
            return

        level = logging.WARNING if isinstance(error, BrokerUnavailable) else logging.INFO
        limiter = _limiters[level]
        if not limiter.allow():
            return
        fields: dict[str, object] = {"front_door": self.front_door, "reason": outcome, **self._ids()}
        if limiter.suppressed:
            fields["suppressed"] = limiter.suppressed
            limiter.suppressed = 0
        logger.log(level, "publish rejected: %s", error, extra=fields)
