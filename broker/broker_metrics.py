"""The broker metrics, kept as plain numbers and handed to prometheus_client when it collects.

Every append updates a duration histogram. Through prometheus_client's
Histogram that is two locked updates and a bucket search in Python:
``observe`` takes about 0.73 µs, against 0.14 µs here (timeit, prometheus_client
0.26, 2-CPU VM). ``BrokerMetrics.collect`` returns the same families and
samples that prometheus_client's Histogram and Counter would export, so a
scrape reads exact values.

NOTE: the updates take no lock, so every update and every scrape must run on
one thread. Each role calls the broker and serves ``/metrics`` on its event loop.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["BROKER_METRICS", "DURATION_BUCKETS", "BrokerMetrics", "DurationSeries", "ErrorCount"]

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds of the broker duration histogram in seconds. ``+Inf`` follows them."""

_BUCKET_LABELS = [*(floatToGoString(bound) for bound in DURATION_BUCKETS), "+Inf"]


class DurationSeries:
    """The duration histogram of one broker operation."""

    __slots__ = ("bucket_counts", "created", "duration_sum")

    def __init__(self) -> None:
        # Observations per bucket, not cumulative. The last bucket is +Inf.
        self.bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.created = time.time()

    def observe(self, duration_s: float) -> None:
        # A bucket counts the values up to and including its bound, as in prometheus_client.
        self.bucket_counts[bisect_left(DURATION_BUCKETS, duration_s)] += 1
        self.duration_sum += duration_s


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
        self._durations: dict[str, DurationSeries] = {}
        self._errors: dict[str, ErrorCount] = {}

    def duration(self, operation: str) -> DurationSeries:
        """Return the duration histogram of ``operation``, created on first use."""
        series = self._durations.get(operation)
        if series is None:
            series = self._durations[operation] = DurationSeries()
        return series

    def errors(self, operation: str) -> ErrorCount:
        """Return the error count of ``operation``, created on first use."""
        errors = self._errors.get(operation)
        if errors is None:
            errors = self._errors[operation] = ErrorCount()
        return errors

    def collect(self) -> Iterator[Metric]:
        # prometheus_client keeps its PROMETHEUS_DISABLE_CREATED_SERIES switch in this private flag.
        with_created = getattr(metrics, "_use_created", True)
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
            labels = {"operation": operation}
            cumulative = 0.0
            for bound, count in zip(_BUCKET_LABELS, series.bucket_counts, strict=True):
                cumulative += count
                duration.add_sample("conduit_broker_duration_seconds_bucket", {**labels, "le": bound}, cumulative)
            duration.add_sample("conduit_broker_duration_seconds_count", labels, cumulative)
            duration.add_sample("conduit_broker_duration_seconds_sum", labels, series.duration_sum)
            if with_created:
                duration.add_sample("conduit_broker_duration_seconds_created", labels, series.created)

        for operation, error_count in self._errors.items():
            labels = {"operation": operation}
            errors.add_sample("conduit_broker_errors_total", labels, float(error_count.count))
            if with_created:
                errors.add_sample("conduit_broker_errors_created", labels, error_count.created)
        yield duration
        yield errors


BROKER_METRICS = BrokerMetrics()
REGISTRY.register(BROKER_METRICS)
