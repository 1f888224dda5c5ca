"""Metrics and rejection logs of publishes, through the HTTP shim and on PublishAttempt directly."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client import REGISTRY

from conduit.errors import InvalidArgument, RateLimited
from publish_grpc import observe
from publish_grpc.observe import PublishAttempt, outcome_of
from tests.publish_grpc.conftest import ORG_ID, bearer, make_request, make_token


def publishes(front_door: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "conduit_publish_requests_total", {"front_door": front_door, "outcome": outcome}
    )
    return value or 0.0


def duration_count(front_door: str) -> float:
    return REGISTRY.get_sample_value("conduit_publish_duration_seconds_count", {"front_door": front_door}) or 0.0


async def test_accepted_publish_counted_not_logged(http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    accepted_before = publishes("http", "accepted")
    durations_before = duration_count("http")
    request = make_request()

    with caplog.at_level(logging.DEBUG, logger="publish_grpc"):
        response = await http.post(
            f"/publish/{ORG_ID}/{request.channel_id}",
            content=request.SerializeToString(),
            headers={"authorization": bearer()},
        )

    assert response.status_code == 200
    assert publishes("http", "accepted") == accepted_before + 1
    assert duration_count("http") == durations_before + 1
    assert [record for record in caplog.records if record.name.startswith("publish_grpc")] == []


async def test_rejected_publish_logged_with_ids(http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    rejected_before = publishes("http", "invalid_argument")
    request = make_request(message_id="not-a-uuid")

    with caplog.at_level(logging.INFO, logger="publish_grpc"):
        response = await http.post(
            f"/publish/{ORG_ID}/{request.channel_id}",
            content=request.SerializeToString(),
            headers={"authorization": bearer()},
        )

    assert response.status_code == 400
    assert publishes("http", "invalid_argument") == rejected_before + 1
    [record] = [record for record in caplog.records if record.name == "publish_grpc.observe"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"publish rejected: {response.text}"
    assert record.reason == "invalid_argument"  # type: ignore[attr-defined]
    assert record.front_door == "http"  # type: ignore[attr-defined]
    assert record.org_id == ORG_ID  # type: ignore[attr-defined]
    assert record.channel_id == request.channel_id  # type: ignore[attr-defined]
    assert record.message_id == "'not-a-uuid'"  # type: ignore[attr-defined]


async def test_rejected_token_never_logged(http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    token = make_token(aud="someone-else")
    request = make_request()

    with caplog.at_level(logging.DEBUG):
        response = await http.post(
            f"/publish/{ORG_ID}/{request.channel_id}",
            content=request.SerializeToString(),
            headers={"authorization": bearer(token)},
        )

    assert response.status_code == 401
    assert caplog.records
    for record in caplog.records:
        assert token not in record.getMessage()
        assert all(token not in str(value) for value in record.__dict__.values())


def test_outcome_of_maps_errors() -> None:
    assert outcome_of(InvalidArgument("x")) == "invalid_argument"
    assert outcome_of(RateLimited("x", retry_after_s=1)) == "rate_limited"
    assert outcome_of(KeyError("x")) == "internal"


def test_rejection_logs_limited_then_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(observe, "_LOG_LINES_PER_WINDOW", 2)
    monkeypatch.setattr(observe, "_LOG_WINDOW_S", 3600.0)

    with caplog.at_level(logging.INFO, logger="publish_grpc"):
        for _ in range(5):
            with pytest.raises(InvalidArgument), PublishAttempt("grpc"):
                raise InvalidArgument("bad")
        # A new window: the next line reports how many were dropped.
        observe._limiters[logging.INFO]._window_started -= 3600.0
        with pytest.raises(InvalidArgument), PublishAttempt("grpc"):
            raise InvalidArgument("bad")

    records = [record for record in caplog.records if record.name == "publish_grpc.observe"]
    assert len(records) == 3
    assert records[2].suppressed == 3  # type: ignore[attr-defined]


def test_unexpected_error_logged_as_error(caplog: pytest.LogCaptureFixture) -> None:
    internal_before = publishes("grpc", "internal")

    with caplog.at_level(logging.INFO, logger="publish_grpc"):
        with pytest.raises(KeyError), PublishAttempt("grpc"):
            raise KeyError("boom")

    assert publishes("grpc", "internal") == internal_before + 1
    [record] = [record for record in caplog.records if record.name == "publish_grpc.observe"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "publish failed"
    assert record.exc_info is not None
