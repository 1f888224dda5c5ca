"""Fuzz the tokens: HS256 publisher tokens over HTTP and gRPC, RS256 subscriber tokens in the query.

Each generated token comes with the status the interface requires, worked out
from how it was built: success, 401 (UNAUTHENTICATED) or, for a subscriber
token that is valid but names another organization or channel, 403.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypothesis import given
from hypothesis import strategies as st

from conduit.tokens import generate_rsa_key_pair
from tests.fuzz import cases
from tests.fuzz.cases import (
    GATEWAY_AUDIENCE,
    ISSUER,
    ORG_ID,
    PUBLISH_AUDIENCE,
    PUBLISH_SECRET,
    b64url,
    count_case,
    fuzz_settings,
    sign_hs256,
    unsigned_token,
)
from tests.fuzz.conftest import Stack

# Both services accept this much clock skew on exp, nbf and iat.
LEEWAY_S = 60
# Offsets stay this far from a leeway boundary, so a slow case cannot cross it.
_MARGIN_S = 30


@dataclass
class TokenCase:
    """A token and whether it must be accepted (before the channel claims are compared)."""

    token: str
    valid: bool
    notes: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def other_private_key() -> object:
    """A private key that the gateway does not trust, loaded once because loading checks it slowly."""
    return load_pem_private_key(generate_rsa_key_pair()[0].encode(), password=None)


def sign_jws(claims: dict[str, object], key: object, algorithm: str) -> str:
    """Sign ``claims`` without PyJWT's checks of claim types, which would refuse the odd ones."""
    return jwt.api_jws.encode(json.dumps(claims).encode(), key, algorithm=algorithm)


def _as_int(value: object) -> int | None:
    """Mirror how a JWT library reads a numeric date claim that arrived as JSON."""
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError, OverflowError):
        return None


time_claims = st.sampled_from(["absent", "now", "past", "skewed", "future", "text", "float", "list", "huge"])
exp_claims = st.sampled_from(
    ["absent", "soon", "far", "skew_expired", "expired", "text_int", "text", "float", "bool", "huge", "enormous", "null"]
)
aud_claims = st.sampled_from(["same", "list_same", "list_mixed", "list_other", "list_empty", "other", "number", "list_number"])
iss_claims = st.sampled_from(["same", "other", "upper", "padded", "number", "absent"])
extra_claims = st.dictionaries(
    st.text(min_size=1, max_size=8).map(lambda name: "x_" + name),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3)),
    max_size=3,
)


def _time_claim(kind: str, now: int) -> tuple[object, bool]:
    """Return the value of an iat or nbf claim and whether it passes."""
    values: dict[str, tuple[object, bool]] = {
        "now": (now, True),
        "past": (now - 3600, True),
        "skewed": (now + LEEWAY_S - _MARGIN_S, True),
        "future": (now + LEEWAY_S + _MARGIN_S, False),
        "text": ("yesterday", False),
        "float": (now - 0.5, True),
        "list": ([now], False),
        "huge": (10**30, False),
    }
    return values[kind]


def _exp_claim(kind: str, now: int) -> tuple[object, bool]:
    values: dict[str, tuple[object, bool]] = {
        "soon": (now + 600, True),
        "far": (now + 100 * 365 * 86400, True),
        "skew_expired": (now - LEEWAY_S + _MARGIN_S, True),
        "expired": (now - LEEWAY_S - _MARGIN_S, False),
        "text_int": (str(now + 600), _as_int(str(now + 600)) is not None),
        "text": ("tomorrow", False),
        "float": (now + 600.5, True),
        "bool": (True, False),
        "huge": (10**30, True),
        "enormous": (10**400, True),
        "null": (None, False),
    }
    return values[kind]


@st.composite
def claim_sets(draw: st.DrawFn, audience: str) -> tuple[dict[str, object], bool]:
    """Draw the standard claims of a token and whether they pass; ``absent`` drops a claim."""
    now = int(time.time())
    claims: dict[str, object] = {}
    valid = True

    iss = draw(iss_claims, label="iss")
    iss_values = {"same": ISSUER, "other": "someone-else", "upper": ISSUER.upper(), "padded": f" {ISSUER}", "number": 7}
    if iss != "absent":
        claims["iss"] = iss_values[iss]
    valid &= iss == "same"

    aud = draw(aud_claims, label="aud")
    aud_values: dict[str, object] = {
        "same": audience, "list_same": [audience], "list_mixed": ["other", audience], "list_other": ["other"],
        "list_empty": [], "other": "other", "number": 7, "list_number": [audience, 7],
    }
    claims["aud"] = aud_values[aud]
    valid &= aud in ("same", "list_same", "list_mixed")

    exp = draw(exp_claims, label="exp")
    if exp != "absent":
        claims["exp"], exp_ok = _exp_claim(exp, now)
        valid &= exp_ok
    else:
        valid = False

    for name in ("iat", "nbf"):
        kind = draw(time_claims, label=name)
        if kind != "absent":
            claims[name], ok = _time_claim(kind, now)
            valid &= ok

    claims.update(draw(extra_claims, label="extra claims"))
    return claims, valid


@st.composite
def publisher_tokens(draw: st.DrawFn) -> TokenCase:
    claims, valid = draw(claim_sets(PUBLISH_AUDIENCE))
    signing = draw(st.sampled_from(["hs256", "hs256_wrong_secret", "hs384", "none", "garbage", "swapped_parts"]))
    if signing == "hs256":
        return TokenCase(sign_hs256(claims, PUBLISH_SECRET), valid, [signing])
    if signing == "hs256_wrong_secret":
        return TokenCase(sign_hs256(claims, PUBLISH_SECRET + "x"), False, [signing])
    if signing == "hs384":
        return TokenCase(sign_hs256(claims, PUBLISH_SECRET, header={"alg": "HS384", "typ": "JWT"}), False, [signing])
    if signing == "none":
        return TokenCase(unsigned_token(claims), False, [signing])
    if signing == "swapped_parts":
        head, body, signature = sign_hs256(claims, PUBLISH_SECRET).split(".")
        return TokenCase(f"{body}.{head}.{signature}", False, [signing])
    return TokenCase(draw(garbage_tokens), False, [signing])


garbage_tokens = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200),
    st.lists(st.binary(min_size=1, max_size=60).map(b64url), min_size=1, max_size=5).map(".".join),
    st.sampled_from(["a.b.c", "..", "e30.e30.", "e30.e30", "null.null.null", "e30." + b64url(b"[1,2]") + "."]),
)


@st.composite
def subscriber_tokens(draw: st.DrawFn, private_key: object, public_pem: str, other_private_key: object,
                      channel_id: str) -> tuple[TokenCase, int]:
    """Draw a subscriber token and the status it must get for ``ORG_ID`` and ``channel_id``."""
    claims, valid = draw(claim_sets(GATEWAY_AUDIENCE))
    mismatch = False

    org = draw(st.sampled_from(["same", "other", "negative", "huge", "text", "float", "bool", "absent", "null"]))
    org_values: dict[str, object] = {
        "same": ORG_ID, "other": ORG_ID + 1, "negative": -ORG_ID, "huge": 10**30, "text": str(ORG_ID),
        "float": float(ORG_ID), "bool": True, "null": None,
    }
    if org != "absent":
        claims["org_id"] = org_values[org]
    valid &= org in ("same", "other", "negative", "huge")
    mismatch |= org in ("other", "negative", "huge")

    channel = draw(st.sampled_from(["same", "upper", "other", "braces", "number", "absent"]))
    channel_values: dict[str, object] = {
        "same": channel_id, "upper": channel_id.upper(), "other": str(uuid.uuid4()), "braces": "{" + channel_id + "}",
        "number": 7,
    }
    if channel != "absent":
        claims["channel_id"] = channel_values[channel]
    valid &= channel in ("same", "upper", "other")
    mismatch |= channel == "other"

    signing = draw(st.sampled_from(["rs256", "rs256_other_key", "hs256_public_key", "none", "garbage"]))
    if signing == "rs256":
        token = sign_jws(claims, private_key, "RS256")
    elif signing == "rs256_other_key":
        token, valid = sign_jws(claims, other_private_key, "RS256"), False
    elif signing == "hs256_public_key":
        # Algorithm confusion: HMAC keyed with the public key that verifies RS256 tokens.
        token, valid = sign_hs256(claims, public_pem), False
    elif signing == "none":
        token, valid = unsigned_token(claims), False
    else:
        token, valid = draw(garbage_tokens), False

    if not valid:
        status = 401
    elif mismatch:
        status = 403
    else:
        status = 200
    return TokenCase(token, valid, [signing]), status


@pytest.mark.parametrize("door", ["http", "grpc"])
@fuzz_settings(150)
@given(case=publisher_tokens())
def test_publisher_tokens(stack: Stack, door: str, case: TokenCase) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    before = stack.stream_entry_count()

    if door == "http":
        response = cases.post_publish(
            stack, str(ORG_ID), channel_id, data, headers={"authorization": f"Bearer {case.token}"}
        )
        cases.assert_http_outcome(stack, response, 200 if case.valid else 401, before)
        if not case.valid:
            assert "token" in response.text or "authorization" in response.text, response.text
            assert len(case.token) < 16 or case.token not in response.text
    else:
        result = cases.grpc_publish(stack, data, token=case.token)
        expected = grpc.StatusCode.OK if case.valid else grpc.StatusCode.UNAUTHENTICATED
        cases.assert_grpc_outcome(stack, result, expected, before)
        assert len(case.token) < 16 or case.token not in result[1]


@fuzz_settings(150)
@given(data=st.data())
def test_subscriber_tokens(
    stack: Stack, other_private_key: object, data: st.DataObject
) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    case, status = data.draw(
        subscriber_tokens(stack.private_key, stack.public_pem, other_private_key, channel_id), label="token"
    )
    params = {"token": case.token, "channel_id": channel_id}

    with stack.http.stream("GET", f"{stack.gateway_url}/events/{ORG_ID}", params=params) as response:
        if status == 200:
            assert response.status_code == 200
            assert next(response.iter_bytes()).startswith(b"retry: ")
        else:
            text = response.read().decode()
            assert response.status_code == status, text
            assert "token" in text, text
            assert len(case.token) < 16 or case.token not in text
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("size", [8 * 1024, 64 * 1024, 1024 * 1024])
def test_publisher_huge_token_http(stack: Stack, size: int) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    before = stack.stream_entry_count()
    response = cases.post_publish(
        stack, str(ORG_ID), channel_id, cases.valid_request(channel_id).SerializeToString(),
        headers={"authorization": "Bearer " + "a" * size},
    )
    assert 400 <= response.status_code < 500, response.status_code
    cases.assert_entries(stack, before, added=0)
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("size", [8 * 1024, 64 * 1024, 1024 * 1024])
def test_publisher_huge_token_grpc(stack: Stack, size: int) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    before = stack.stream_entry_count()
    code, details = cases.grpc_publish(stack, cases.valid_request(channel_id).SerializeToString(), token="a" * size)
    assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL), code
    assert details != ""
    cases.assert_entries(stack, before, added=0)
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("size", [8 * 1024, 64 * 1024, 1024 * 1024])
def test_subscriber_huge_token(stack: Stack, size: int) -> None:
    count_case(stack)
    target = f"/events/{ORG_ID}?channel_id={uuid.uuid4()}&token={'a' * size}"
    status, body = cases.raw_http(stack.gateway.port, f"GET {target} HTTP/1.1\r\nHost: fuzz\r\n\r\n".encode())
    assert 400 <= status < 500, (status, body[:200])
    assert body != b""
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("door", ["http", "grpc"])
@pytest.mark.parametrize(
    "claims",
    [{"exp": 10**400}, {"iat": int(time.time()) + 5}, {"nbf": int(time.time()) + 5}],
    ids=["exp-beyond-float", "iat-skewed", "nbf-skewed"],
)
def test_publisher_token_edge_claims_accepted(stack: Stack, door: str, claims: dict[str, object]) -> None:
    """An exp too large for a float, and an iat or nbf a few seconds ahead (clock skew), are valid."""
    count_case(stack)
    token = cases.publisher_token(**claims)
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    before = stack.stream_entry_count()
    if door == "http":
        response = cases.post_publish(stack, str(ORG_ID), channel_id, data, headers={"authorization": f"Bearer {token}"})
        cases.assert_http_outcome(stack, response, 200, before)
    else:
        cases.assert_grpc_outcome(stack, cases.grpc_publish(stack, data, token=token), grpc.StatusCode.OK, before)
