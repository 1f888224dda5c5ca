"""Requests to ``GET /events/{org_id}`` that are rejected before any streaming starts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import jwt
import pytest

from gateway_http.server import GatewayServer
from tests.gateway_http.helpers import AUDIENCE, ISSUER, ORG_ID

# Authentication does not depend on the broker, so one kind is enough.
pytestmark = pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)


def signed(private_pem: str, **overrides: object) -> str:
    """Return an RS256 token with valid defaults for ``ORG_ID``, changed or removed (None) by ``overrides``."""
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 600,
        "org_id": ORG_ID,
        "channel_id": str(uuid.UUID(int=1)),
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, private_pem, algorithm="RS256")


async def assert_rejected(response: httpx.Response, status_code: int, detail: str) -> None:
    assert response.status_code == status_code
    assert response.json() == {"status_code": status_code, "detail": detail}


@pytest.fixture
def channel() -> str:
    return str(uuid.UUID(int=1))


async def test_events_missing_token_is_401(client: httpx.AsyncClient, channel: str) -> None:
    response = await client.get(f"/events/{ORG_ID}", params={"channel_id": channel})

    await assert_rejected(response, 401, "token query parameter is required")


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"exp": int(time.time()) - 3600}, "token has expired"),
        ({"iss": "someone-else"}, "token issuer is not accepted"),
        ({"aud": "another-service"}, "token audience is not accepted"),
        ({"exp": None}, "token is missing the exp claim"),
        ({"iss": None}, "token is missing the iss claim"),
        ({"aud": None}, "token is missing the aud claim"),
        ({"org_id": None}, "token is missing the org_id claim"),
        ({"channel_id": None}, "token is missing the channel_id claim"),
        ({"org_id": str(ORG_ID)}, "token claim org_id must be a JSON integer"),
        ({"org_id": True}, "token claim org_id must be a JSON integer"),
        ({"org_id": float(ORG_ID)}, "token claim org_id must be a JSON integer"),
        ({"channel_id": "not-a-uuid"}, "token claim channel_id must be a UUID string"),
        ({"channel_id": 7}, "token claim channel_id must be a UUID string"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
async def test_events_bad_claims_are_401(
    client: httpx.AsyncClient,
    rsa_keys: tuple[str, str],
    channel: str,
    overrides: dict[str, object],
    detail: str,
) -> None:
    token = signed(rsa_keys[0], **overrides)

    response = await client.get(f"/events/{ORG_ID}", params={"token": token, "channel_id": channel})

    await assert_rejected(response, 401, detail)
    assert token not in response.text


async def test_events_token_from_other_key_is_401(client: httpx.AsyncClient, channel: str) -> None:
    from conduit.tokens import generate_rsa_key_pair

    other_private, _ = generate_rsa_key_pair()
    token = signed(other_private)

    response = await client.get(f"/events/{ORG_ID}", params={"token": token, "channel_id": channel})

    await assert_rejected(response, 401, "token signature is invalid")


async def test_events_hs256_token_is_401(client: httpx.AsyncClient, rsa_keys: tuple[str, str], channel: str) -> None:
    # An HS256 token signed with the public key text must not pass for RS256.
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600, "org_id": ORG_ID, "channel_id": channel}
    token = jwt.encode(claims, "a shared secret of sufficient length for HS256", algorithm="HS256")

    response = await client.get(f"/events/{ORG_ID}", params={"token": token, "channel_id": channel})

    await assert_rejected(response, 401, "token must be signed with RS256")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30"])
async def test_events_malformed_token_is_401(client: httpx.AsyncClient, channel: str, token: str) -> None:
    response = await client.get(f"/events/{ORG_ID}", params={"token": token, "channel_id": channel})

    await assert_rejected(response, 401, "token is malformed")


async def test_events_other_org_is_403(client: httpx.AsyncClient, rsa_keys: tuple[str, str], channel: str) -> None:
    token = signed(rsa_keys[0], org_id=ORG_ID + 1)

    response = await client.get(f"/events/{ORG_ID}", params={"token": token, "channel_id": channel})

    await assert_rejected(response, 403, f"token grants org_id {ORG_ID + 1}, not the requested org_id {ORG_ID}")


async def test_events_other_channel_is_403(client: httpx.AsyncClient, rsa_keys: tuple[str, str], channel: str) -> None:
    other = str(uuid.UUID(int=2))
    token = signed(rsa_keys[0], channel_id=other)

    response = await client.get(f"/events/{ORG_ID}", params={"token": token, "channel_id": channel})

    await assert_rejected(response, 403, f"token grants channel_id {other}, not the requested channel_id {channel}")


@pytest.mark.parametrize(
    ("org_id", "detail"),
    [
        ("abc", "org_id must be a non-negative 64-bit integer, got 'abc'"),
        ("-1", "org_id must be a non-negative 64-bit integer, got '-1'"),
        ("1.5", "org_id must be a non-negative 64-bit integer, got '1.5'"),
        (str(2**64), f"org_id must be a non-negative 64-bit integer, got '{2**64}'"),
    ],
)
async def test_events_malformed_org_id_is_400(
    client: httpx.AsyncClient, mint: Callable[..., str], channel: str, org_id: str, detail: str
) -> None:
    response = await client.get(f"/events/{org_id}", params={"token": mint(channel), "channel_id": channel})

    await assert_rejected(response, 400, detail)


@pytest.mark.parametrize(
    ("channel_id", "detail"),
    [
        ("", "channel_id query parameter is required"),
        ("nope", "channel_id must be a UUID such as 97f58c19-ce38-4c6b-8a5b-47f3405691f0, got 'nope'"),
        (
            "97f58c19ce384c6b8a5b47f3405691f0",
            "channel_id must be a UUID such as 97f58c19-ce38-4c6b-8a5b-47f3405691f0, "
            "got '97f58c19ce384c6b8a5b47f3405691f0'",
        ),
    ],
)
async def test_events_malformed_channel_id_is_400(
    client: httpx.AsyncClient, mint: Callable[..., str], channel: str, channel_id: str, detail: str
) -> None:
    response = await client.get(f"/events/{ORG_ID}", params={"token": mint(channel), "channel_id": channel_id})

    await assert_rejected(response, 400, detail)


async def test_events_missing_channel_id_is_400(client: httpx.AsyncClient, mint: Callable[..., str], channel: str) -> None:
    response = await client.get(f"/events/{ORG_ID}", params={"token": mint(channel)})

    await assert_rejected(response, 400, "channel_id query parameter is required")


async def test_events_malformed_last_event_id_header_is_400(
    client: httpx.AsyncClient, mint: Callable[..., str], channel: str
) -> None:
    response = await client.get(
        f"/events/{ORG_ID}",
        params={"token": mint(channel), "channel_id": channel},
        headers={"Last-Event-ID": "yesterday"},
    )

    await assert_rejected(
        response, 400, "Last-Event-ID must be a stream entry id such as 1733350000000-0, got 'yesterday'"
    )


async def test_events_malformed_last_event_id_query_is_400(
    client: httpx.AsyncClient, mint: Callable[..., str], channel: str
) -> None:
    response = await client.get(
        f"/events/{ORG_ID}", params={"token": mint(channel), "channel_id": channel, "last_event_id": "12-x"}
    )

    await assert_rejected(response, 400, "Last-Event-ID must be a stream entry id such as 1733350000000-0, got '12-x'")


async def test_events_rejection_opens_no_stream(
    gateway: GatewayServer, client: httpx.AsyncClient, channel: str
) -> None:
    response = await client.get(f"/events/{ORG_ID}", params={"token": "garbage", "channel_id": channel})

    assert response.status_code == 401
    assert gateway.open_stream_count == 0


async def test_events_rejection_log_omits_token(
    client: httpx.AsyncClient, rsa_keys: tuple[str, str], channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = signed(rsa_keys[0], org_id=ORG_ID + 1)
    caplog.set_level("INFO", logger="gateway_http")

    response = await client.get(f"/events/{ORG_ID}", params={"token": token, "channel_id": channel})

    assert response.status_code == 403
    gateway_records = [record for record in caplog.records if record.name.startswith("gateway_http")]
    assert gateway_records
    for record in gateway_records:
        assert token not in record.getMessage()
        assert token not in str(record.__dict__)
