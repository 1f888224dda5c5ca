"""Verify subscriber tokens: RS256 JWTs that grant one channel of one organization.

The public key is parsed once, when the verifier is built. Error messages name
the problem and never repeat the token.
"""

from __future__ import annotations

import re

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from conduit.errors import ConfigError, PermissionDenied, Unauthenticated
from conduit.settings import JwtSettings

__all__ = ["CLOCK_SKEW_LEEWAY_S", "TokenVerifier"]

CLOCK_SKEW_LEEWAY_S = 60
"""Seconds by which ``exp`` (and ``nbf``, ``iat``) may be off between the token issuer and the gateway."""

_REQUIRED_CLAIMS = ["exp", "iss", "aud", "org_id", "channel_id"]
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# Most specific first: several of these subclass one another.
_TOKEN_ERRORS: list[tuple[type[jwt.InvalidTokenError], str]] = [
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "token must be signed with RS256"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.DecodeError, "token is malformed"),
]


class TokenVerifier:
    """Check subscriber tokens against the gateway's RS256 public key and expected claims."""

    def __init__(self, settings: JwtSettings, *, leeway_s: float = CLOCK_SKEW_LEEWAY_S) -> None:
        try:
            key = load_pem_public_key(settings.key.encode("ascii"))
        except (ValueError, UnicodeEncodeError, TypeError):
            raise ConfigError("GATEWAY_JWT_PUBLIC_KEY is not a PEM-encoded public key") from None
        if not isinstance(key, RSAPublicKey):
            raise ConfigError("GATEWAY_JWT_PUBLIC_KEY must be an RSA public key, because tokens are RS256")
        self._key = key
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._leeway_s = leeway_s

    def authorize(self, token: str | None, *, org_id: int, channel_id: str) -> None:
        """Return when ``token`` is valid and grants ``org_id`` and ``channel_id`` (a lower-case UUID).

        Raises ``Unauthenticated`` for a missing, malformed, wrongly signed or
        expired token, and for one whose ``org_id`` or ``channel_id`` claim is
        missing or of the wrong type. Raises ``PermissionDenied`` when the claims
        name another organization or channel.
        """
        if token is None or token == "":
            raise Unauthenticated("token query parameter is required")

        claims = self._decode(token)

        claimed_org_id = claims["org_id"]
        # bool is a subclass of int, and JSON true must not pass for org 1.
        if type(claimed_org_id) is not int:
            raise Unauthenticated("token claim org_id must be a JSON integer")
        claimed_channel_id = claims["channel_id"]
        if not isinstance(claimed_channel_id, str) or _UUID.fullmatch(claimed_channel_id) is None:
            raise Unauthenticated("token claim channel_id must be a UUID string")

        if claimed_org_id != org_id:
            raise PermissionDenied(f"token grants org_id {claimed_org_id}, not the requested org_id {org_id}")
        if claimed_channel_id.lower() != channel_id:
            raise PermissionDenied(
                f"token grants channel_id {claimed_channel_id.lower()}, not the requested channel_id {channel_id}"
            )

    def _decode(self, token: str) -> dict[str, object]:
        try:
            return jwt.decode(
                token,
                self._key,
                algorithms=["RS256"],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway_s,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(f"token is missing the {error.claim} claim") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(_describe(error)) from None


def _describe(error: jwt.InvalidTokenError) -> str:
    for error_type, message in _TOKEN_ERRORS:
        if isinstance(error, error_type):
            return message
    return "token is invalid"
