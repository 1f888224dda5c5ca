"""BrokerMetrics exports what prometheus_client's Histogram and Counter would for the same broker calls."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from broker.broker_metrics import DURATION_BUCKETS, BrokerMetrics

# (operation, duration in seconds), with durations on, between and past the bucket bounds.
CALLS = [
    ("append", 0.0),
    ("append", 0.0005),
    ("append", 0.0007),
    ("append", 5.0),
    ("append", 7.5),
    ("ping", 0.001),
    ("delete_idle", 0.3),
]
ERRORS = ["append", "read", "read", "ping"]


def reference_registry() -> tuple[CollectorRegistry, Histogram, Counter]:
    registry = CollectorRegistry()
    duration = Histogram(
        "conduit_broker_duration_seconds",
        "Time a broker call took, for calls that do not wait for new entries",
        ["operation"],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    errors = Counter(
        "conduit_broker_errors",
        "Broker calls that failed because the broker was unreachable, failing or too slow",
        ["operation"],
        registry=registry,
    )
    return registry, duration, errors


def exposition_without_created(text: bytes) -> list[str]:
    """Return the lines of an exposition, sorted, without the ``_created`` samples that hold creation times."""
    return sorted(line for line in text.decode().splitlines() if "_created" not in line)


def test_export_matches_prometheus_client() -> None:
    registry, duration, errors = reference_registry()
    collected = CollectorRegistry()
    metrics = BrokerMetrics()
    collected.register(metrics)

    # A series that exists but has no observations yet, as InstrumentedBroker creates them.
    duration.labels("info")
    metrics.duration("info")
    errors.labels("read_many")
    metrics.errors("read_many")
    for operation, duration_s in CALLS:
        duration.labels(operation).observe(duration_s)
        metrics.duration(operation).observe(duration_s)
    for operation in ERRORS:
        errors.labels(operation).inc()
        metrics.errors(operation).count += 1

    assert exposition_without_created(generate_latest(collected)) == exposition_without_created(generate_latest(registry))
    assert exposition_without_created(generate_openmetrics(collected)) == exposition_without_created(
        generate_openmetrics(registry)
    )


def test_export_has_created_samples() -> None:
    collected = CollectorRegistry()
    metrics = BrokerMetrics()
    collected.register(metrics)

    metrics.duration("append").observe(0.01)
    metrics.errors("append").count += 1

    labels = {"operation": "append"}
    assert collected.get_sample_value("conduit_broker_duration_seconds_count", labels) == 1.0
    assert collected.get_sample_value("conduit_broker_duration_seconds_created", labels) is not None
    assert collected.get_sample_value("conduit_broker_errors_total", labels) == 1.0
    assert collected.get_sample_value("conduit_broker_errors_created", labels) is not None


def test_export_before_any_call_is_empty() -> None:
    registry, *_ = reference_registry()
    collected = CollectorRegistry()
    collected.register(BrokerMetrics())

    assert generate_latest(collected) == generate_latest(registry)
