"""Shared pieces of the fuzz tests: settings, tokens, an independent validity oracle and the checks.

``expected_publish`` decides from the interface rules alone whether a publish
body must be accepted, rejected as invalid or rejected as too large, so the
tests do not borrow the service's own validation code to judge it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING, Literal

import grpc
import httpx
import jwt
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct, Value
from hypothesis import HealthCheck, settings

from conduit.v1alpha.publish_pb2 import PublishRequest, PublishResponse

if TYPE_CHECKING:
    from tests.fuzz.conftest import Stack

PUBLISH_SECRET = "fuzz-publisher-secret-of-at-least-32-bytes"
ISSUER = "fuzz-issuer"
PUBLISH_AUDIENCE = "fuzz-publish"
GATEWAY_AUDIENCE = "fuzz-gateway"
ORG_ID = 7
MAX_MESSAGE_BYTES = 16384
UINT64_MAX = 2**64 - 1
CLIENT_TIMEOUT_S = 10
# Body read deadline of the fuzz stack's HTTP shim, short so that the slow-body cases finish quickly.
BODY_READ_TIMEOUT_S = 0.5

PUBLISH_METHOD = "/conduit.v1alpha.PublishService/Publish"
PUBLISH_STREAM_METHOD = "/conduit.v1alpha.PublishService/PublishStream"

Outcome = Literal["accepted", "invalid", "too_large"]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_STREAM_ID = re.compile(r"[0-9]+-[0-9]+")
_VALID_PHASES = (1, 2, 3, 4)

CASES_RUN = 0


def count_case(stack: Stack) -> None:
    """Count one generated case for the session summary and forget problems that earlier cases logged."""
    global CASES_RUN
    CASES_RUN += 1
    stack.problems.records.clear()


def fuzz_settings(max_examples: int) -> settings:
    """Bounded hypothesis settings: the servers are shared, so the fixture health check does not apply."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=False,
        database=None,
    )


# Tokens

def publisher_token(**claims: object) -> str:
    """Return a valid HS256 publisher token; ``claims`` override the defaults, None drops one."""
    now = int(time.time())
    payload: dict[str, object] = {"iss": ISSUER, "aud": PUBLISH_AUDIENCE, "iat": now, "exp": now + 600}
    payload.update(claims)
    return sign_hs256({key: value for key, value in payload.items() if value is not None}, PUBLISH_SECRET)


def subscriber_token(stack: Stack, channel_id: str) -> str:
    """Return a valid RS256 subscriber token for ``ORG_ID`` and ``channel_id``."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": GATEWAY_AUDIENCE, "iat": now, "exp": now + 600, "org_id": ORG_ID,
              "channel_id": channel_id}
    return jwt.encode(claims, stack.private_key, algorithm="RS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_hs256(claims: dict[str, object], secret: str | bytes, header: dict[str, object] | None = None) -> str:
    """Sign ``claims`` by hand, so that keys PyJWT refuses to use for HMAC (a PEM) can be used too."""
    key = secret.encode() if isinstance(secret, str) else secret
    head = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(signature)}"


def unsigned_token(claims: dict[str, object]) -> str:
    """Return a token with ``alg: none`` and an empty signature."""
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(claims).encode())}."


# Requests

def valid_request(channel_id: str, *, org_id: int = ORG_ID, sequence: int = 1, phase: int = 2) -> PublishRequest:
    request = PublishRequest(
        channel_id=channel_id,
        message_id=str(uuid.uuid4()),
        phase=phase,  # type: ignore[arg-type]
        sequence=sequence,
        org_id=org_id,
    )
    request.payload.update({"text": "hello"})
    request.client_timestamp.FromSeconds(1_733_350_000)
    return request


def expected_publish(data: bytes, *, path: tuple[int, str] | None) -> Outcome:
    """Return what the interface says a publish of ``data`` must end in; ``path`` is HTTP's (org_id, channel_id)."""
    if len(data) > MAX_MESSAGE_BYTES:
        return "too_large"
    try:
        request = PublishRequest.FromString(data)
    except DecodeError:
        return "invalid"

    if path is None:
        if request.org_id == 0 or not _UUID.fullmatch(request.channel_id):
            return "invalid"
    else:
        if request.org_id not in (0, path[0]):
            return "invalid"
        if request.channel_id != "" and request.channel_id.lower() != path[1]:
            return "invalid"
    if not _UUID.fullmatch(request.message_id):
        return "invalid"
    if request.phase not in _VALID_PHASES:
        return "invalid"
    if not _is_finite_struct(request.payload):
        return "invalid"
    return "accepted"


def _is_finite_struct(struct: Struct) -> bool:
    pending: list[Value] = list(struct.fields.values())
    while pending:
        value = pending.pop()
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            return False
        if kind == "struct_value":
            pending.extend(value.struct_value.fields.values())
        elif kind == "list_value":
            pending.extend(value.list_value.values)
    return True


# Checks

_HTTP_STATUS = {"accepted": 200, "invalid": 400, "too_large": 413}
_GRPC_CODE = {
    "accepted": grpc.StatusCode.OK,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def post_publish(
    stack: Stack, org_id: str, channel_id: str, body: bytes, *, headers: dict[str, str] | None = None
) -> httpx.Response:
    all_headers = {"authorization": f"Bearer {publisher_token()}", "content-type": "application/x-protobuf"}
    all_headers.update(headers or {})
    return stack.http.post(f"{stack.publish_url}/publish/{org_id}/{channel_id}", content=body, headers=all_headers)


def grpc_publish(stack: Stack, data: bytes, *, token: str | None = None) -> tuple[grpc.StatusCode, str]:
    """Call Publish with raw request bytes; return the status code and its details (the stream id on success)."""
    call = stack.grpc_channel.unary_unary(PUBLISH_METHOD, request_serializer=None, response_deserializer=None)
    metadata = (("authorization", f"Bearer {token if token is not None else publisher_token()}"),)
    try:
        response = call(data, metadata=metadata, timeout=CLIENT_TIMEOUT_S)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, PublishResponse.FromString(response).stream_id


def assert_http_outcome(stack: Stack, response: httpx.Response, outcome: Outcome | int, entries_before: int) -> None:
    """Check status, message, the stream entries and the log for one HTTP case."""
    status = _HTTP_STATUS[outcome] if isinstance(outcome, str) else outcome
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:300]}"
    assert response.text.strip() != "", "the response names no reason"
    if status == 200:
        assert _STREAM_ID.fullmatch(response.text), response.text
    assert_entries(stack, entries_before, added=1 if status == 200 else 0)
    stack.assert_no_problem_logged()


def assert_grpc_outcome(
    stack: Stack, result: tuple[grpc.StatusCode, str], outcome: Outcome | grpc.StatusCode, entries_before: int
) -> None:
    code, details = result
    expected = _GRPC_CODE[outcome] if isinstance(outcome, str) else outcome
    assert code == expected, f"expected {expected}, got {code}: {details[:300]}"
    assert details.strip() != "", "the status names no reason"
    if code == grpc.StatusCode.OK:
        assert _STREAM_ID.fullmatch(details), details
    assert_entries(stack, entries_before, added=1 if code == grpc.StatusCode.OK else 0)
    stack.assert_no_problem_logged()


def raw_http(port: int, head: bytes, body_parts: list[bytes] = (), *, pause_s: float = 0) -> tuple[int, bytes]:  # type: ignore[assignment]
    """Send ``head`` and then each of ``body_parts``, pausing ``pause_s`` between them; return status and body.

    The server may answer and close before every part is sent, so a failed send ends the sending.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as connection:
        try:
            connection.sendall(head)
            for part in body_parts:
                if pause_s:
                    time.sleep(pause_s)
                connection.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        while b"\r\n\r\n" not in received or not _response_complete(received):
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    # An interim "100 Continue" answers Expect: 100-continue; the final response follows it.
    if received.startswith(b"HTTP/1.1 100 "):
        received = received.partition(b"\r\n\r\n")[2]
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), f"no HTTP response: {received[:200]!r}"
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _response_complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length: *([0-9]+)", head)
    return match is not None and len(body) >= int(match[1])


def assert_entries(stack: Stack, before: int, *, added: int) -> None:
    after = stack.stream_entry_count()
    assert after == before + added, f"streams hold {after} entries, expected {before + added}"
    if added:
        # Keep the database small, so counting stays cheap for the next case.
        for key in stack.redis.scan_iter(match="stream:*", count=1000):
            stack.redis.delete(key)
