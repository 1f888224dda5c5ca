"""PublishMetrics exports what prometheus_client's Counter, Histogram and Gauge would for the same publishes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from publish_grpc.publish_metrics import DURATION_BUCKETS, PublishMetrics

# (front door, duration in seconds, outcome), with durations on, between and past the bucket bounds.
PUBLISHES = [
    ("http", 0.0, "accepted"),
    ("http", 0.0005, "accepted"),
    ("http", 0.0007, "rate_limited"),
    ("http", 5.0, "accepted"),
    ("http", 7.5, "broker_unavailable"),
    ("grpc", 0.001, "accepted"),
    ("grpc", 0.3, "cancelled"),
]


def reference_registry() -> tuple[CollectorRegistry, Counter, Histogram, Gauge]:
    registry = CollectorRegistry()
    requests = Counter(
        "conduit_publish_requests",
        "Publish requests answered, by front door and outcome.",
        ["front_door", "outcome"],
        registry=registry,
    )
    duration = Histogram(
        "conduit_publish_duration_seconds",
        "Time from receiving a publish to answering it, by front door.",
        ["front_door"],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    in_flight = Gauge(
        "conduit_publish_in_flight", "Publishes being processed now, by front door.", ["front_door"], registry=registry
    )
    return registry, requests, duration, in_flight


def exposition_without_created(text: bytes) -> list[str]:
    """Return the lines of an exposition, sorted, without the ``_created`` samples that hold creation times."""
    return sorted(line for line in text.decode().splitlines() if "_created" not in line)


def test_export_matches_prometheus_client() -> None:
    registry, requests, duration, in_flight = reference_registry()
    collected = CollectorRegistry()
    metrics = PublishMetrics()
    collected.register(metrics)

    for front_door, duration_s, outcome in PUBLISHES:
        in_flight.labels(front_door).inc()
        metrics.series(front_door).in_flight += 1
        in_flight.labels(front_door).dec()
        duration.labels(front_door).observe(duration_s)
        requests.labels(front_door, outcome).inc()
        metrics.series(front_door).observe(duration_s, outcome)
    # One publish still in flight on each front door.
    for front_door in ("http", "grpc"):
        in_flight.labels(front_door).inc()
        metrics.series(front_door).in_flight += 1

    assert exposition_without_created(generate_latest(collected)) == exposition_without_created(generate_latest(registry))
    assert exposition_without_created(generate_openmetrics(collected)) == exposition_without_created(
        generate_openmetrics(registry)
    )


def test_export_has_created_samples() -> None:
    collected = CollectorRegistry()
    metrics = PublishMetrics()
    collected.register(metrics)

    metrics.series("http").in_flight += 1
    metrics.series("http").observe(0.01, "accepted")

    labels = {"front_door": "http", "outcome": "accepted"}
    assert collected.get_sample_value("conduit_publish_requests_total", labels) == 1.0
    assert collected.get_sample_value("conduit_publish_requests_created", labels) is not None
    assert collected.get_sample_value("conduit_publish_duration_seconds_created", {"front_door": "http"}) is not None


def test_export_before_any_publish_is_empty() -> None:
    registry, *_ = reference_registry()
    collected = CollectorRegistry()
    collected.register(PublishMetrics())

    assert generate_latest(collected) == generate_latest(registry)
