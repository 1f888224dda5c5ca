"""TokenVerifier on its own: key checks at start-up and claim checks per request."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conduit.errors import ConfigError, PermissionDenied, Unauthenticated
from conduit.settings import JwtSettings
from gateway_http.auth import TokenVerifier
from tests.gateway_http.helpers import AUDIENCE, ISSUER, ORG_ID

CHANNEL = str(uuid.UUID(int=5))


@pytest.fixture(scope="module")
def verifier(rsa_keys: tuple[str, str]) -> TokenVerifier:
    return TokenVerifier(JwtSettings(key=rsa_keys[1], issuer=ISSUER, audience=AUDIENCE))


def token_with(private_pem: str, **claims: object) -> str:
    base: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 60,
        "org_id": ORG_ID,
        "channel_id": CHANNEL,
    }
    return jwt.encode({**base, **claims}, private_pem, algorithm="RS256")


def test_verifier_accepts_matching_token(verifier: TokenVerifier, rsa_keys: tuple[str, str]) -> None:
    verifier.authorize(token_with(rsa_keys[0]), org_id=ORG_ID, channel_id=CHANNEL)


def test_verifier_accepts_uppercase_channel_claim(verifier: TokenVerifier, rsa_keys: tuple[str, str]) -> None:
    verifier.authorize(token_with(rsa_keys[0], channel_id=CHANNEL.upper()), org_id=ORG_ID, channel_id=CHANNEL)


def test_verifier_tolerates_small_clock_skew(verifier: TokenVerifier, rsa_keys: tuple[str, str]) -> None:
    verifier.authorize(token_with(rsa_keys[0], exp=int(time.time()) - 5), org_id=ORG_ID, channel_id=CHANNEL)


def test_verifier_without_leeway_rejects_just_expired(rsa_keys: tuple[str, str]) -> None:
    strict = TokenVerifier(JwtSettings(key=rsa_keys[1], issuer=ISSUER, audience=AUDIENCE), leeway_s=0)

    with pytest.raises(Unauthenticated, match="token has expired"):
        strict.authorize(token_with(rsa_keys[0], exp=int(time.time()) - 5), org_id=ORG_ID, channel_id=CHANNEL)


def test_verifier_future_nbf_is_rejected(verifier: TokenVerifier, rsa_keys: tuple[str, str]) -> None:
    with pytest.raises(Unauthenticated, match="token is not valid yet"):
        verifier.authorize(token_with(rsa_keys[0], nbf=int(time.time()) + 3600), org_id=ORG_ID, channel_id=CHANNEL)


def test_verifier_empty_token_is_missing(verifier: TokenVerifier) -> None:
    with pytest.raises(Unauthenticated, match="token query parameter is required"):
        verifier.authorize("", org_id=ORG_ID, channel_id=CHANNEL)


def test_verifier_org_mismatch_names_both(verifier: TokenVerifier, rsa_keys: tuple[str, str]) -> None:
    with pytest.raises(PermissionDenied, match=f"token grants org_id {ORG_ID}, not the requested org_id 9"):
        verifier.authorize(token_with(rsa_keys[0]), org_id=9, channel_id=CHANNEL)


def test_verifier_non_rsa_key_is_config_error() -> None:
    ec_public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    with pytest.raises(ConfigError, match="GATEWAY_JWT_PUBLIC_KEY must be an RSA public key"):
        TokenVerifier(JwtSettings(key=ec_public, issuer=ISSUER, audience=AUDIENCE))


def test_verifier_garbage_key_is_config_error() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_JWT_PUBLIC_KEY is not a PEM-encoded public key"):
        TokenVerifier(JwtSettings(key="not a key", issuer=ISSUER, audience=AUDIENCE))
