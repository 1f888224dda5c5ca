"""Parsing of the subscribe request's query string, org_id, channel_id and Last-Event-ID."""

from __future__ import annotations

import pytest

from conduit.errors import InvalidArgument
from gateway_http.params import parse_channel_id, parse_last_event_id, parse_org_id, parse_query


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("123", 123), ("007", 7), (str(2**64 - 1), 2**64 - 1)])
def test_parse_org_id_valid(raw: str, expected: int) -> None:
    assert parse_org_id(raw) == expected


@pytest.mark.parametrize("raw", ["", "-1", "+1", " 1", "1.0", "1e3", "abc", str(2**64), "9" * 5000, "١٢٣"])
def test_parse_org_id_invalid(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="org_id must be a non-negative 64-bit integer, got"):
        parse_org_id(raw)


def test_parse_org_id_long_value_is_shortened() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_org_id("9" * 5000)

    assert len(caught.value.message) < 200


def test_parse_channel_id_lowercases() -> None:
    assert parse_channel_id("97F58C19-CE38-4C6B-8A5B-47F3405691F0") == "97f58c19-ce38-4c6b-8a5b-47f3405691f0"


@pytest.mark.parametrize(
    "raw",
    [
        "97f58c19ce384c6b8a5b47f3405691f0",
        "{97f58c19-ce38-4c6b-8a5b-47f3405691f0}",
        "urn:uuid:97f58c19-ce38-4c6b-8a5b-47f3405691f0",
        "97f58c19-ce38-4c6b-8a5b-47f3405691f",
        "97f58c19-ce38-4c6b-8a5b-47f3405691fg",
        " 97f58c19-ce38-4c6b-8a5b-47f3405691f0",
    ],
)
def test_parse_channel_id_invalid(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="channel_id must be a UUID"):
        parse_channel_id(raw)


@pytest.mark.parametrize("raw", [None, ""])
def test_parse_channel_id_missing(raw: str | None) -> None:
    with pytest.raises(InvalidArgument, match="channel_id query parameter is required"):
        parse_channel_id(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("", None), ("0-0", "0-0"), ("1733350000000-12", "1733350000000-12"), ("0012-01", "12-1")],
)
def test_parse_last_event_id_valid(raw: str | None, expected: str | None) -> None:
    assert parse_last_event_id(raw) == expected


@pytest.mark.parametrize("raw", ["12", "12-", "-1", "a-b", "1-2-3", f"{2**64}-0", "1 -0", "1-0\n"])
def test_parse_last_event_id_invalid(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="Last-Event-ID must be a stream entry id"):
        parse_last_event_id(raw)


@pytest.mark.parametrize(
    ("query_string", "expected"),
    [
        (b"", {}),
        (b"channel_id=a&token=t", {"channel_id": "a", "token": "t"}),
        (b"token=first&token=last", {"token": "last"}),
        (b"token=&channel_id", {"token": "", "channel_id": ""}),
        (b"token=a%2Bb+c", {"token": "a+b c"}),
    ],
    ids=["empty", "two-names", "repeated-last-wins", "blank-values", "percent-and-plus"],
)
def test_parse_query_values(query_string: bytes, expected: dict[str, str]) -> None:
    assert parse_query(query_string) == expected
