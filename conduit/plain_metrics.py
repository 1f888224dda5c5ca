"""Duration histograms kept as plain numbers, for collectors that hand them to prometheus_client.

prometheus_client's Histogram takes a lock and searches its buckets in
Python on every ``observe``, about 0.73 µs, against 0.14 µs here (timeit,
prometheus_client 0.26, 2-CPU VM). ``add_histogram_samples`` writes the
samples that prometheus_client's Histogram would export, so a scrape reads
exact values.

NOTE: nothing here takes a lock, so every update and every scrape must run on
one thread, as they do on a role's event loop.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from prometheus_client import metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

__all__ = ["DURATION_BUCKETS", "DurationHistogram", "add_histogram_samples", "created_series_enabled"]

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds of the duration histograms in seconds. ``+Inf`` follows them."""

_BUCKET_LABELS = [*(floatToGoString(bound) for bound in DURATION_BUCKETS), "+Inf"]


class DurationHistogram:
    """One labelled series of a duration histogram over ``DURATION_BUCKETS``."""

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


def created_series_enabled() -> bool:
    """Return whether prometheus_client exports ``_created`` samples.

    prometheus_client keeps its PROMETHEUS_DISABLE_CREATED_SERIES switch in a
    private flag, which this reads.
    """
    return bool(getattr(metrics, "_use_created", True))


def add_histogram_samples(
    family: Metric, labels: dict[str, str], histogram: DurationHistogram, *, with_created: bool
) -> None:
    """Add ``histogram``'s bucket, count, sum and (when enabled) created samples to ``family``."""
    name = family.name
    cumulative = 0.0
    for bound, count in zip(_BUCKET_LABELS, histogram.bucket_counts, strict=True):
        cumulative += count
        family.add_sample(f"{name}_bucket", {**labels, "le": bound}, cumulative)
    family.add_sample(f"{name}_count", labels, cumulative)
    family.add_sample(f"{name}_sum", labels, histogram.duration_sum)
    if with_created:
        family.add_sample(f"{name}_created", labels, histogram.created)
