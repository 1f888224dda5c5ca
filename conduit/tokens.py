"""Mint publisher and subscriber tokens, and generate the key pair that dev mode uses.

A real application issues subscriber tokens from its own backend with
``mint_subscriber_token`` and the RS256 private key that matches the gateway's
``GATEWAY_JWT_PUBLIC_KEY``.
"""

from __future__ import annotations

import time
import warnings

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "MIN_HS256_SECRET_BYTES",
    "generate_rsa_key_pair",
    "mint_publisher_token",
    "mint_subscriber_token",
    "short_secret_message",
]

MIN_HS256_SECRET_BYTES = 32
"""Shortest HS256 secret that RFC 7518 section 3.2 allows: the size of the SHA-256 output."""


def short_secret_message(secret: str) -> str | None:
    """Return a warning naming PUBLISH_JWT_SECRET's length when it is below ``MIN_HS256_SECRET_BYTES``, else None.

    The message gives the length only, never the secret. A short secret still
    works, because publishers of an existing deployment may use one, but a
    brute-force search of it gets easier with every byte less.
    """
    length = len(secret.encode())
    if length >= MIN_HS256_SECRET_BYTES:
        return None
    return (
        f"PUBLISH_JWT_SECRET is {length} bytes long, below the {MIN_HS256_SECRET_BYTES} bytes that HS256 "
        "requires (RFC 7518, section 3.2): set a longer random secret on the publish service and its publishers"
    )


def mint_publisher_token(secret: str, *, issuer: str, audience: str, ttl_s: int = 3600) -> str:
    """Return an HS256 token that the publish service accepts for ``ttl_s`` seconds."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + ttl_s}
    with warnings.catch_warnings():
        # Callers report a short secret with short_secret_message, without PyJWT's file paths.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")


def mint_subscriber_token(
    private_key_pem: str,
    *,
    issuer: str,
    audience: str,
    org_id: int,
    channel_id: str,
    ttl_s: int = 3600,
) -> str:
    """Return an RS256 token that lets its holder subscribe to one channel for ``ttl_s`` seconds."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl_s,
        "org_id": org_id,
        "channel_id": channel_id,
    }
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


def generate_rsa_key_pair(key_size_bits: int = 2048) -> tuple[str, str]:
    """Return a new ``(private_key_pem, public_key_pem)`` pair for RS256."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size_bits)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return private_pem, public_pem
