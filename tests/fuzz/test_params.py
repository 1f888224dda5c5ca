"""Fuzz the ids in paths and queries: ``POST /publish/{org_id}/{channel_id}`` and ``GET /events/{org_id}``."""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import cases
from tests.fuzz.cases import ORG_ID, UINT64_MAX, count_case, fuzz_settings
from tests.fuzz.conftest import Stack

_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

_ROUTE_CHANGING = ("", ".", "..")

org_ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", " 7", "7 ", "+7", "-0", "0x7", "7.0", "1e3", "٣", "７", "¹", "007", str(UINT64_MAX),
                     str(UINT64_MAX + 1), "9" * 5000, "nan", "%00", "\t7"]),
    st.text(max_size=30),
).map(lambda raw: raw.replace("/", "|"))


def channel_variants(channel: uuid.UUID) -> st.SearchStrategy[str]:
    text = str(channel)
    return st.sampled_from([
        text,
        text.upper(),
        "{" + text + "}",
        "urn:uuid:" + text,
        channel.hex,
        text + " ",
        " " + text,
        text[:-1],
        text + "0",
        text.replace("-", "_"),
        text.replace("a", "g", 1) if "a" in text else "g" + text[1:],
        "",
        "null",
        text + "\x00",
    ]) | st.text(max_size=50).map(lambda raw: raw.replace("/", "|"))


def org_is_valid(raw: str) -> bool:
    return re.fullmatch(r"[0-9]+", raw) is not None and len(raw) <= 20 and int(raw) <= UINT64_MAX


def path_segment(raw: str) -> str:
    # Slashes stay out of the generated ids: ASGI servers decode %2F before routing, so a
    # slash would change the route instead of the parameter's value.
    return quote(raw, safe="")


@fuzz_settings(200)
@given(data=st.data())
def test_publish_path_ids(stack: Stack, data: st.DataObject) -> None:
    count_case(stack)
    channel = uuid.uuid4()
    raw_org = data.draw(org_ids, label="org_id")
    raw_channel = data.draw(channel_variants(channel), label="channel_id")
    request = cases.valid_request(str(channel))
    request.ClearField("org_id")
    request.ClearField("channel_id")
    valid = org_is_valid(raw_org) and _CANONICAL_UUID.fullmatch(raw_channel) is not None
    before = stack.stream_entry_count()

    response = cases.post_publish(stack, path_segment(raw_org), path_segment(raw_channel), request.SerializeToString())

    # An empty, "." or ".." segment changes the route: 404 or 405, still a clear 4xx.
    if raw_org in _ROUTE_CHANGING or raw_channel in _ROUTE_CHANGING:
        assert response.status_code in (404, 405), response.text
        cases.assert_entries(stack, before, added=0)
        stack.assert_no_problem_logged()
        return
    cases.assert_http_outcome(stack, response, 200 if valid else 400, before)
    if not valid:
        assert "org_id" in response.text or "channel_id" in response.text, response.text


@fuzz_settings(200)
@given(data=st.data())
def test_events_path_and_query_ids(stack: Stack, data: st.DataObject) -> None:
    count_case(stack)
    channel = uuid.uuid4()
    raw_org = data.draw(org_ids, label="org_id")
    raw_channel = data.draw(channel_variants(channel), label="channel_id")
    raw_last_id = data.draw(
        st.sampled_from(["", "0-0", "1-1", "01-02", f"{UINT64_MAX}-{UINT64_MAX}", f"{UINT64_MAX + 1}-0", "1", "-1-0",
                         "1-", "a-b", "１-１"]) | st.text(max_size=25),
        label="last_event_id",
    )
    token = cases.subscriber_token(stack, str(channel))
    params = {"token": token, "channel_id": raw_channel}
    headers = {}
    if data.draw(st.booleans(), label="Last-Event-ID as a header") and raw_last_id.isascii() and raw_last_id.isprintable():
        headers["last-event-id"] = raw_last_id.strip()
        raw_last_id = raw_last_id.strip()
    else:
        params["last_event_id"] = raw_last_id
    channel_ok = _CANONICAL_UUID.fullmatch(raw_channel) is not None
    last_id_ok = raw_last_id == "" or _last_id_is_valid(raw_last_id)
    valid = org_is_valid(raw_org) and channel_ok and last_id_ok

    url = f"{stack.gateway_url}/events/{path_segment(raw_org)}"
    with stack.http.stream("GET", url, params=params, headers=headers, timeout=cases.CLIENT_TIMEOUT_S) as response:
        if raw_org in _ROUTE_CHANGING:
            assert response.status_code == 404
        elif not valid:
            response.read()
            assert response.status_code == 400, response.text
            assert any(name in response.text for name in ("org_id", "channel_id", "Last-Event-ID")), response.text
        elif int(raw_org) != ORG_ID:
            response.read()
            assert response.status_code == 403, response.text
            assert "org_id" in response.text
        else:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert next(response.iter_bytes()).startswith(b"retry: ")
    stack.assert_no_problem_logged()


def _last_id_is_valid(raw: str) -> bool:
    match = re.fullmatch(r"([0-9]{1,20})-([0-9]{1,20})", raw)
    return match is not None and int(match[1]) <= UINT64_MAX and int(match[2]) <= UINT64_MAX


def test_events_huge_org_id_is_rejected(stack: Stack) -> None:
    """A path id of thousands of digits is a 400, not a failure of int() on too many digits."""
    count_case(stack)
    response = stack.http.get(f"{stack.gateway_url}/events/{'9' * 5000}", params={"channel_id": str(uuid.uuid4())})
    assert response.status_code == 400
    assert "org_id" in response.text


def test_publish_huge_org_id_is_rejected(stack: Stack) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    before = stack.stream_entry_count()
    response = cases.post_publish(stack, "9" * 5000, channel_id, cases.valid_request(channel_id).SerializeToString())
    cases.assert_http_outcome(stack, response, 400, before)
    assert "org_id" in response.text
