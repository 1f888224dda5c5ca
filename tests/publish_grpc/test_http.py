"""The HTTP shim against a real Redis: every status the interface lists, with its body."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import jwt
import pytest
import redis

from broker.keys import stream_key
from conduit.v1alpha.publish_pb2 import Phase, PublishRequest
from publish_grpc import PublishServer
from tests.publish_grpc.conftest import (
    AUDIENCE,
    ISSUER,
    MAX_MESSAGE_BYTES,
    ORG_ID,
    RATE_LIMIT,
    RATE_WINDOW_S,
    bearer,
    make_request,
    make_token,
    request_of_size,
    stream_keys,
)

TEXT_PLAIN = "text/plain; charset=utf-8"


async def post(
    http: httpx.AsyncClient,
    request: PublishRequest | bytes,
    *,
    org_id: object = ORG_ID,
    channel_id: str | None = None,
    authorization: str | None = "default",
) -> httpx.Response:
    """POST ``request`` to the channel its channel_id names, unless ``channel_id`` is given."""
    body = request if isinstance(request, bytes) else request.SerializeToString()
    if channel_id is None:
        channel_id = request.channel_id if isinstance(request, PublishRequest) else str(uuid.uuid4())
    headers = {}
    if authorization is not None:
        headers["authorization"] = bearer() if authorization == "default" else authorization
    return await http.post(f"/publish/{org_id}/{channel_id}", content=body, headers=headers)


async def test_publish_accepted_returns_stream_id(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    request = make_request()

    response = await post(http, request)

    assert response.status_code == 200
    assert response.headers["content-type"] == TEXT_PLAIN
    entries = redis_client.xrange(stream_key(ORG_ID, request.channel_id))
    assert [entry_id.decode() for entry_id, _ in entries] == [response.text]
    assert entries[0][1] == {b"data": request.SerializeToString()}


async def test_publish_end_sets_stream_expiry(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    request = make_request(phase=Phase.PHASE_END)

    response = await post(http, request)

    assert response.status_code == 200
    assert redis_client.ttl(stream_key(ORG_ID, request.channel_id)) > 0


async def test_publish_uppercase_ids_stored_lowercase(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    channel_id = str(uuid.uuid4())
    message_id = str(uuid.uuid4())
    request = make_request(channel_id=channel_id.upper(), message_id=message_id.upper())

    response = await post(http, request, channel_id=channel_id.upper())

    assert response.status_code == 200
    entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
    stored = PublishRequest.FromString(entries[0][1][b"data"])
    assert stored.channel_id == channel_id
    assert stored.message_id == message_id
    assert stored.payload == request.payload


async def test_publish_empty_body_channel_takes_path(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    channel_id = str(uuid.uuid4())
    request = make_request(channel_id="")

    response = await post(http, request, channel_id=channel_id)

    assert response.status_code == 200
    entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert PublishRequest.FromString(entries[0][1][b"data"]).channel_id == channel_id


async def test_publish_matching_body_org_accepted(http: httpx.AsyncClient) -> None:
    response = await post(http, make_request(org_id=ORG_ID))

    assert response.status_code == 200


async def test_publish_largest_org_id_accepted(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    request = make_request()

    response = await post(http, request, org_id=2**64 - 1)

    assert response.status_code == 200
    assert redis_client.xlen(stream_key(2**64 - 1, request.channel_id)) == 1


BAD_TOKENS = [
    pytest.param(None, "authorization is missing: send 'authorization: Bearer <token>'", id="missing"),
    pytest.param("", "authorization is missing: send 'authorization: Bearer <token>'", id="empty"),
    pytest.param(
        f"Basic {make_token()}",
        "authorization must use the Bearer scheme: send 'authorization: Bearer <token>'",
        id="basic-scheme",
    ),
    pytest.param(make_token(), "authorization must use the Bearer scheme: send 'authorization: Bearer <token>'", id="no-scheme"),
    pytest.param("Bearer", "authorization has the Bearer scheme but no token: send 'authorization: Bearer <token>'", id="bearer-only"),
    pytest.param("Bearer not.a.jwt", "token is malformed: ", id="malformed"),
    pytest.param("Bearer abc", "token is malformed: Not enough segments", id="one-segment"),
    pytest.param(bearer(make_token(exp=int(time.time()) - 60)), "token has expired: mint a new one", id="expired"),
    pytest.param(
        bearer(make_token(secret="another-secret-that-is-long-enough-32")),
        "token signature is invalid: it was not signed with the publisher secret",
        id="wrong-signature",
    ),
    pytest.param(
        bearer(make_token(iss="someone-else")),
        "token issuer (iss) is not the one this service accepts",
        id="wrong-issuer",
    ),
    pytest.param(
        bearer(make_token(aud="conduit-gateway")),
        "token audience (aud) is not the one this service accepts",
        id="wrong-audience",
    ),
    pytest.param(bearer(make_token(exp=None)), "token is missing the required 'exp' claim", id="no-exp"),
    pytest.param(bearer(make_token(iss=None)), "token is missing the required 'iss' claim", id="no-iss"),
    pytest.param(
        bearer(jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}, None, algorithm="none")),
        "token algorithm is not accepted: publisher tokens must use HS256",
        id="alg-none",
    ),
]


@pytest.mark.parametrize(("authorization", "message"), BAD_TOKENS)
async def test_publish_bad_token_401(
    http: httpx.AsyncClient, redis_client: redis.Redis, authorization: str | None, message: str
) -> None:
    response = await post(http, make_request(), authorization=authorization)

    assert response.status_code == 401
    assert response.headers["content-type"] == TEXT_PLAIN
    assert response.text.startswith(message)
    token = (authorization or "").rpartition(" ")[2]
    if len(token) > 20:
        assert token not in response.text
    assert stream_keys(redis_client) == []


CHANNEL = "97f58c19-ce38-4c6b-8a5b-47f3405691f0"
OTHER_CHANNEL = "0b1f0c9e-3a57-4f4e-9d36-9a3f1d2c4b5a"
UUID_FORM = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"

BAD_REQUESTS = [
    pytest.param(
        "abc", CHANNEL, make_request(channel_id=CHANNEL),
        "org_id in the path must be a non-negative integer, got 'abc'",
        id="path-org-not-integer",
    ),
    pytest.param(
        "-1", CHANNEL, make_request(channel_id=CHANNEL),
        "org_id in the path must be a non-negative integer, got '-1'",
        id="path-org-negative",
    ),
    pytest.param(
        str(2**64), CHANNEL, make_request(channel_id=CHANNEL),
        f"org_id in the path must be at most {2**64 - 1}, got '{2**64}'",
        id="path-org-over-uint64",
    ),
    pytest.param(
        ORG_ID, "not-a-uuid", make_request(channel_id=CHANNEL),
        f"channel_id in the path must be a UUID ({UUID_FORM}), got 'not-a-uuid'",
        id="path-channel-not-uuid",
    ),
    pytest.param(
        ORG_ID, CHANNEL, b"\xff\xff\xff",
        "request is not a valid binary-encoded conduit.v1alpha.PublishRequest (JSON is not accepted): Wire format was corrupt",
        id="undecodable",
    ),
    pytest.param(
        ORG_ID, CHANNEL, b"\x0a\x02\xff\xfe",
        "request is not a valid binary-encoded conduit.v1alpha.PublishRequest (JSON is not accepted): String field had bad UTF-8",
        id="bad-utf8",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id="channel-7"),
        f"channel_id must be a UUID ({UUID_FORM}), got 'channel-7'",
        id="body-channel-not-uuid",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=OTHER_CHANNEL),
        f"channel_id '{OTHER_CHANNEL}' in the request does not match channel_id '{CHANNEL}' in the path",
        id="body-channel-differs",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=CHANNEL, org_id=ORG_ID + 1),
        f"org_id {ORG_ID + 1} in the request does not match org_id {ORG_ID} in the path",
        id="body-org-differs",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=CHANNEL, message_id="m-1"),
        f"message_id must be a UUID ({UUID_FORM}), got 'm-1'",
        id="message-id-not-uuid",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=CHANNEL, message_id=""),
        f"message_id is missing: set it to a UUID ({UUID_FORM})",
        id="message-id-missing",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=CHANNEL, phase=Phase.PHASE_UNSPECIFIED),
        "phase must be one of PHASE_START, PHASE_DELTA, PHASE_END, PHASE_ERROR, got PHASE_UNSPECIFIED (0)",
        id="phase-unspecified",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=CHANNEL, phase=9),
        "phase must be one of PHASE_START, PHASE_DELTA, PHASE_END, PHASE_ERROR, got 9, which is not a Phase value",
        id="phase-unknown",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=CHANNEL, payload={"score": float("nan")}),
        "'payload.score' is NaN, which JSON cannot represent",
        id="payload-nan",
    ),
    pytest.param(
        ORG_ID, CHANNEL, make_request(channel_id=CHANNEL, payload={"a": {"b": [1, float("-inf")]}}),
        "'payload.a.b[1]' is -Infinity, which JSON cannot represent",
        id="payload-nested-infinity",
    ),
]


@pytest.mark.parametrize(("org_id", "channel_id", "request_", "message"), BAD_REQUESTS)
async def test_publish_bad_request_400(
    http: httpx.AsyncClient,
    redis_client: redis.Redis,
    org_id: object,
    channel_id: str,
    request_: PublishRequest | bytes,
    message: str,
) -> None:
    response = await post(http, request_, org_id=org_id, channel_id=channel_id)

    assert response.status_code == 400
    assert response.headers["content-type"] == TEXT_PLAIN
    assert response.text == message
    assert stream_keys(redis_client) == []


async def test_publish_long_bad_value_shortened(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    response = await post(http, make_request(channel_id=CHANNEL, message_id="m" * 900), channel_id=CHANNEL)

    assert response.status_code == 400
    assert response.text.startswith(f"message_id must be a UUID ({UUID_FORM}), got 'mmmm")
    assert response.text.endswith("... (900 characters)")
    assert len(response.text) < 200
    assert stream_keys(redis_client) == []


async def test_publish_at_size_limit_accepted(http: httpx.AsyncClient) -> None:
    response = await post(http, request_of_size(MAX_MESSAGE_BYTES))

    assert response.status_code == 200


async def test_publish_content_length_over_limit_413(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    request = request_of_size(MAX_MESSAGE_BYTES + 1)

    response = await post(http, request)

    assert response.status_code == 413
    assert response.headers["content-type"] == TEXT_PLAIN
    assert response.text == (
        f"PublishRequest is {MAX_MESSAGE_BYTES + 1} bytes (Content-Length), "
        f"over the limit of {MAX_MESSAGE_BYTES} bytes"
    )
    assert stream_keys(redis_client) == []


async def test_publish_chunked_over_limit_413(server: PublishServer, redis_client: redis.Redis) -> None:
    # A raw connection, because httpx sends the whole body before it reads the response.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    try:
        writer.write(
            f"POST /publish/{ORG_ID}/{CHANNEL} HTTP/1.1\r\nhost: test\r\n"
            f"authorization: {bearer()}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"\x00" * (MAX_MESSAGE_BYTES // 2 + 1)
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2)
        await writer.drain()

        # The body has not ended: only a response based on the bytes so far can arrive.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        status_line, *header_lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout=10)
    finally:
        writer.close()

    assert status_line == "HTTP/1.1 413 Request Entity Too Large"
    assert body.decode() == f"PublishRequest is over the limit of {MAX_MESSAGE_BYTES} bytes"
    assert stream_keys(redis_client) == []


async def test_publish_over_rate_limit_429(http: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    channel_id = str(uuid.uuid4())
    key = stream_key(ORG_ID, channel_id)
    for _ in range(RATE_LIMIT):
        assert (await post(http, make_request(channel_id=channel_id))).status_code == 200

    response = await post(http, make_request(channel_id=channel_id))

    assert response.status_code == 429
    assert response.headers["content-type"] == TEXT_PLAIN
    assert response.text.startswith(
        f"publish rate limit exceeded for {key}: at most {RATE_LIMIT} publishes per {RATE_WINDOW_S} s; retry in "
    )
    assert 1 <= int(response.headers["retry-after"]) <= RATE_WINDOW_S
    assert redis_client.xlen(key) == RATE_LIMIT


async def test_health_endpoints_answer(http: httpx.AsyncClient) -> None:
    healthz = await http.get("/healthz")
    readyz = await http.get("/readyz")
    metrics = await http.get("/metrics")

    assert healthz.status_code == 200
    assert healthz.json()["status"] == "ok"
    assert readyz.status_code == 200
    assert readyz.json() == {"status": "ready"}
    assert metrics.status_code == 200
    assert "conduit_publish_requests_total" in metrics.text


async def test_metrics_content_type_parameters_unique(http: httpx.AsyncClient) -> None:
    # Prometheus parses the media type with Go's mime.ParseMediaType, which
    # rejects a parameter given twice, and Prometheus 3 then fails the scrape.
    response = await http.get("/metrics")

    media_type, *parameters = response.headers["content-type"].split(";")
    names = [parameter.split("=")[0].strip().lower() for parameter in parameters]
    assert media_type == "text/plain"
    assert sorted(names) == sorted(set(names))
    assert "charset" in names


async def test_publish_unknown_route_404(http: httpx.AsyncClient) -> None:
    response = await http.post(f"/publish/{ORG_ID}", content=b"", headers={"authorization": bearer()})

    assert response.status_code == 404
