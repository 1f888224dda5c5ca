"""Back-off and give-up clock for one consumer of a failing broker."""

from __future__ import annotations

import logging
import time

from conduit.errors import BrokerUnavailable

__all__ = ["RetryBudget"]

logger = logging.getLogger(__name__)

_BACKOFF_INITIAL_S = 0.1
_BACKOFF_MAX_S = 2.0


class RetryBudget:
    """Spaces retries with exponential back-off and gives up once failures last longer than ``budget_s``.

    A success resets the clock, so only an unbroken run of failures counts.
    """

    def __init__(self, budget_s: float, *, log_fields: dict[str, object]) -> None:
        self._budget_s = budget_s
        self._log_fields = log_fields
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_INITIAL_S

    def delay_s(self) -> float:
        """Return how long to wait before the next attempt; 0 when it may start now."""
        return max(0.0, self._retry_at - time.monotonic())

    def failed(self, error: Exception) -> None:
        """Record a failed attempt; raise BrokerUnavailable, chained, once the budget is spent."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            logger.warning("broker call failed; retrying", extra={**self._log_fields, "error": str(error)})
        elif now - self._failing_since >= self._budget_s:
            raise BrokerUnavailable(
                f"broker unreachable for {now - self._failing_since:.1f} s; gave up reading the stream"
            ) from error
        self._retry_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)

    def succeeded(self) -> None:
        """Record a successful attempt, which ends any run of failures."""
        if self._failing_since is not None:
            logger.info("broker call recovered", extra=self._log_fields)
        self._failing_since = None
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_INITIAL_S
