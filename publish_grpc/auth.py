"""Publisher authentication: ``authorization: Bearer <HS256 JWT>``.

The same header value arrives as an HTTP header or as gRPC metadata. Error
messages name what is wrong with the token and never contain the token itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable

import jwt

from conduit.errors import InvalidArgument, Unauthenticated
from conduit.settings import JwtSettings
from conduit.tokens import short_secret_message

__all__ = ["CLOCK_SKEW_LEEWAY_S", "DEFAULT_CACHE_SIZE", "TokenVerifier", "check_single_authorization"]

DEFAULT_CACHE_SIZE = 1024
CLOCK_SKEW_LEEWAY_S = 60
"""Seconds by which ``exp``, ``nbf`` and ``iat`` may be off between a publisher's clock and this service's."""
_ALGORITHMS = ["HS256"]
_REQUIRED_CLAIMS = ["exp", "iss", "aud"]
_USAGE = "send 'authorization: Bearer <token>'"
_DETAIL_MAX_CHARS = 120

logger = logging.getLogger(__name__)


class TokenVerifier:
    """Verify publisher tokens and remember the valid ones until their ``exp``.

    A hot publisher sends the same token on every call, so only its first call
    pays for the HMAC check and claim validation. The cache stores SHA-256
    digests of tokens, never the tokens, and at most ``cache_size`` of them,
    evicting the least recently used.

    ``leeway_s`` is the clock skew allowed on ``exp``, ``nbf`` and ``iat``. The
    default of 0 checks them exactly; the server passes ``CLOCK_SKEW_LEEWAY_S``.
    """

    def __init__(
        self,
        settings: JwtSettings,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
        leeway_s: float = 0,
    ) -> None:
        self._secret = settings.key
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._cache_size = cache_size
        self._clock = clock
        self._leeway_s = leeway_s
        self._expiry_by_digest: OrderedDict[bytes, int] = OrderedDict()
        message = short_secret_message(settings.key)
        self._short_secret = message is not None
        if message is not None:
            logger.warning(message)

    def __repr__(self) -> str:
        return f"TokenVerifier(issuer={self._issuer!r}, audience={self._audience!r}, cached={len(self)})"

    def __len__(self) -> int:
        """Number of tokens currently cached."""
        return len(self._expiry_by_digest)

    def verify(self, authorization: str | None) -> int:
        """Return the ``exp`` of the valid token in ``authorization``; raise Unauthenticated otherwise."""
        token = _bearer_token(authorization)
        digest = hashlib.sha256(token.encode()).digest()

        expires_at = self._expiry_by_digest.get(digest)
        if expires_at is not None:
            if self._clock() - self._leeway_s < expires_at:
                self._expiry_by_digest.move_to_end(digest)
                return expires_at
            del self._expiry_by_digest[digest]
            raise Unauthenticated("token has expired: mint a new one")

        claims = self._decode(token)
        # The decoder accepted int(exp); an int compares with the float clock even past 1e308.
        expires_at = int(claims["exp"])  # type: ignore[call-overload]
        self._expiry_by_digest[digest] = expires_at
        if len(self._expiry_by_digest) > self._cache_size:
            self._expiry_by_digest.popitem(last=False)
        return expires_at

    def check_unexpired(self, expires_at: int) -> None:
        """Raise Unauthenticated when a token that ``verify`` accepted with this ``exp`` has expired since.

        For a caller that verified a token once and uses it again, such as
        one PublishStream call: it skips the token's digest and cache lookup.
        """
        if self._clock() - self._leeway_s >= expires_at:
            raise Unauthenticated("token has expired: mint a new one")

    def _decode(self, token: str) -> dict[str, object]:
        try:
            if not self._short_secret:
                return self._decode_claims(token)
            with warnings.catch_warnings():
                # The constructor logged the short secret once. PyJWT would warn again at every cache miss.
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                return self._decode_claims(token)
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token has expired: mint a new one") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature is invalid: it was not signed with the publisher secret") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("token algorithm is not accepted: publisher tokens must use HS256") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(f"token is missing the required {error.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token issuer (iss) is not the one this service accepts") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token audience (aud) is not the one this service accepts") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token is not valid yet: its nbf or iat is in the future") from None
        except jwt.DecodeError as error:
            raise Unauthenticated(f"token is malformed: {_shorten(str(error))}") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"token is invalid: {_shorten(str(error))}") from None


    def _decode_claims(self, token: str) -> dict[str, object]:
        return jwt.decode(
            token,
            self._secret,
            algorithms=_ALGORITHMS,
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway_s,
            options={"require": _REQUIRED_CLAIMS},
        )


def check_single_authorization(count: int, source: str) -> None:
    """Raise InvalidArgument when ``source``, such as "the Authorization header", carries ``count`` > 1 values.

    Servers and proxies differ on which of several values they use, so a
    proxy could check one token while this server uses the other.
    """
    if count > 1:
        raise InvalidArgument(f"{source} appears {count} times: send exactly one bearer token")


def _bearer_token(authorization: str | None) -> str:
    if authorization is None or authorization.strip() == "":
        raise Unauthenticated(f"authorization is missing: {_USAGE}")
    # The scheme is case-insensitive (RFC 7235); the token itself is never quoted back.
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(f"authorization must use the Bearer scheme: {_USAGE}")
    token = token.strip()
    if token == "":
        raise Unauthenticated(f"authorization has the Bearer scheme but no token: {_USAGE}")
    return token


def _shorten(detail: str) -> str:
    """Cut PyJWT's message to ``_DETAIL_MAX_CHARS`` and escape its control characters.

    Some messages quote header values of the token, which the client chose,
    and a line break among them would forge a line in the text log.
    """
    if not detail.isprintable():
        detail = "".join(char if char.isprintable() else repr(char)[1:-1] for char in detail)
    return detail if len(detail) <= _DETAIL_MAX_CHARS else detail[:_DETAIL_MAX_CHARS] + "..."
