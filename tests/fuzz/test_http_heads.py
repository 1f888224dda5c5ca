"""Mutated request heads on the publish port: never a 500, never a traceback, an entry only on 200."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import cases
from tests.fuzz.cases import ORG_ID, count_case, fuzz_settings
from tests.fuzz.conftest import Stack

# Bytes that matter to an HTTP/1.1 parser, and a few that do not.
_HEAD_BYTES = st.binary(max_size=12) | st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b"\xc3\xa9", b"\xff", b"%", b"%2F", b"/..", b"//",
     b"content-length: 1\r\n", b"transfer-encoding: chunked\r\n", b"authorization: Bearer x\r\n",
     b"connection: upgrade\r\nupgrade: h2c\r\n", b"expect: 100-continue\r\n"]
)

# Statuses the port may send for a mutated request; a 5xx other than these is a server fault.
_EXPECTED_STATUSES = {200, 400, 401, 403, 404, 405, 413, 431, 501, 505}


def publish_request(channel_id: str) -> tuple[bytes, bytes]:
    """Return the head, without its final CRLF, and the body of a valid publish that closes the connection."""
    body = cases.valid_request(channel_id).SerializeToString()
    lines = [f"POST /publish/{ORG_ID}/{channel_id} HTTP/1.1", "Host: fuzz",
             f"Authorization: Bearer {cases.publisher_token()}", "Connection: close", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n").encode(), body


@fuzz_settings(80)
@given(
    mutations=st.lists(st.tuples(st.floats(min_value=0, max_value=1), st.integers(0, 4), _HEAD_BYTES),
                       min_size=1, max_size=3),
)
def test_mutated_publish_head(stack: Stack, mutations: list[tuple[float, int, bytes]]) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    head, body = publish_request(channel_id)
    # Each mutation replaces up to ``removed`` bytes at a relative position with ``inserted``.
    for position, removed, inserted in mutations:
        index = int(position * len(head))
        head = head[:index] + inserted + head[index + removed :]
    before = stack.stream_entry_count()

    status, response_body = cases.raw_http(stack.publish.http_port, head + b"\r\n", [body])

    assert status in _EXPECTED_STATUSES, (status, response_body, head)
    cases.assert_entries(stack, before, added=1 if status == 200 else 0)
    stack.assert_no_problem_logged()
