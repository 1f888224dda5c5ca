"""The broker metrics, kept as plain numbers and handed to prometheus_client when it collects.

Every broker call updates a duration histogram (``conduit.plain_metrics``
explains the cost saved). ``BrokerMetrics.collect`` returns the same families
and samples that prometheus_client's Histogram and Counter would export, so
a scrape reads exact values.

NOTE: the updates take no lock, so every update and every scrape must run on
one thread. Each role calls the broker and serves ``/metrics`` on its event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from conduit.plain_metrics import DURATION_BUCKETS, DurationHistogram, add_histogram_samples, created_series_enabled

__all__ = ["BROKER_METRICS", "DURATION_BUCKETS", "BrokerMetrics", "ErrorCount"]

class ErrorCount:
    """The failed calls of one broker operation."""

    __slots__ = ("count", "created")

    def __init__(self) -> None:
        self.count = 0
        self.created = time.time()


class BrokerMetrics(Collector):
    """Collector of ``conduit_broker_duration_seconds`` and ``conduit_broker_errors_total``.

    An operation's series appear once ``duration`` or ``errors`` first
    returns them, as labelled children do in prometheus_client.
    """

    def __init__(self) -> None:
        self._durations: dict[str, DurationHistogram] = {}
        self._errors: dict[str, ErrorCount] = {}

    def duration(self, operation: str) -> DurationHistogram:
        """Return the duration histogram of ``operation``, created on first use."""
        series = self._durations.get(operation)
        if series is None:
            series = self._durations[operation] = DurationHistogram()
        return series

    def errors(self, operation: str) -> ErrorCount:
        """Return the error count of ``operation``, created on first use."""
        errors = self._errors.get(operation)
        if errors is None:
            errors = self._errors[operation] = ErrorCount()
        return errors

    def collect(self) -> Iterator[Metric]:
        with_created = created_series_enabled()
        duration = Metric(
            "conduit_broker_duration_seconds",
            "Time a broker call took, for calls that do not wait for new entries",
            "histogram",
        )
        errors = Metric(
            "conduit_broker_errors",
            "Broker calls that failed because the broker was unreachable, failing or too slow",
            "counter",
        )

        for operation, series in self._durations.items():
            add_histogram_samples(duration, {"operation": operation}, series, with_created=with_created)

        for operation, error_count in self._errors.items():
            labels = {"operation": operation}
            errors.add_sample("conduit_broker_errors_total", labels, float(error_count.count))
            if with_created:
                errors.add_sample("conduit_broker_errors_created", labels, error_count.created)
        yield duration
        yield errors


BROKER_METRICS = BrokerMetrics()
REGISTRY.register(BROKER_METRICS)
