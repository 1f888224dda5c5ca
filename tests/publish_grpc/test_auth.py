"""TokenVerifier without a server: header forms, the verified-token cache, and what it never reveals."""

from __future__ import annotations

import time

import jwt
import pytest

from conduit.errors import Unauthenticated
from conduit.settings import JwtSettings
from conduit.tokens import generate_rsa_key_pair
from publish_grpc.auth import TokenVerifier
from tests.publish_grpc.conftest import AUDIENCE, ISSUER, SECRET, make_token


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(JwtSettings(key=SECRET, issuer=ISSUER, audience=AUDIENCE), cache_size=3, clock=clock)


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count calls into PyJWT's decode, which still does the real work."""
    calls: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: object, **kwargs: object) -> object:
        calls.append(token)
        return real_decode(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counting_decode)
    return calls


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_verify_scheme_case_insensitive(verifier: TokenVerifier, scheme: str) -> None:
    verifier.verify(f"{scheme} {make_token()}")


def test_verify_cached_token_not_decoded_again(verifier: TokenVerifier, decode_calls: list[str]) -> None:
    token = make_token()

    for _ in range(5):
        verifier.verify(f"Bearer {token}")

    assert decode_calls == [token]
    assert len(verifier) == 1


def test_verify_cached_token_expires(verifier: TokenVerifier, clock: FakeClock, decode_calls: list[str]) -> None:
    exp = int(clock.now) + 60
    token = make_token(exp=exp)
    verifier.verify(f"Bearer {token}")

    clock.now = exp
    with pytest.raises(Unauthenticated) as raised:
        verifier.verify(f"Bearer {token}")

    assert raised.value.message == "token has expired: mint a new one"
    assert decode_calls == [token]
    assert len(verifier) == 0


def test_verify_cache_bounded(verifier: TokenVerifier, decode_calls: list[str]) -> None:
    tokens = [make_token(sub=f"publisher-{index}") for index in range(5)]

    for token in tokens:
        verifier.verify(f"Bearer {token}")
    verifier.verify(f"Bearer {tokens[0]}")

    assert len(verifier) == 3
    # The oldest token was evicted, so it was decoded again.
    assert decode_calls == [*tokens, tokens[0]]


def test_verify_rejected_token_not_cached(verifier: TokenVerifier, decode_calls: list[str]) -> None:
    token = make_token(aud="someone-else")

    for _ in range(2):
        with pytest.raises(Unauthenticated):
            verifier.verify(f"Bearer {token}")

    assert decode_calls == [token, token]
    assert len(verifier) == 0


def test_verify_rs256_token_rejected(verifier: TokenVerifier) -> None:
    private_pem, _ = generate_rsa_key_pair()
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}, private_pem, algorithm="RS256")

    with pytest.raises(Unauthenticated) as raised:
        verifier.verify(f"Bearer {token}")

    assert raised.value.message == "token algorithm is not accepted: publisher tokens must use HS256"


def test_verify_future_nbf_rejected(verifier: TokenVerifier) -> None:
    with pytest.raises(Unauthenticated) as raised:
        verifier.verify(f"Bearer {make_token(nbf=int(time.time()) + 3600)}")

    assert raised.value.message == "token is not valid yet: its nbf or iat is in the future"


def test_verify_missing_audience_claim_rejected(verifier: TokenVerifier) -> None:
    with pytest.raises(Unauthenticated) as raised:
        verifier.verify(f"Bearer {make_token(aud=None)}")

    assert raised.value.message == "token is missing the required 'aud' claim"


def test_verify_control_characters_escaped(verifier: TokenVerifier) -> None:
    # PyJWT quotes a crit header value in its message, which then reaches the log line.
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
        headers={"crit": ["\n2026-01-01 ERROR forged\r\x1b[31m"]},
    )

    with pytest.raises(Unauthenticated) as raised:
        verifier.verify(f"Bearer {token}")

    assert raised.value.message == (
        "token is invalid: Unsupported critical extension: \\n2026-01-01 ERROR forged\\r\\x1b[31m"
    )


def test_verifier_repr_hides_secret(verifier: TokenVerifier) -> None:
    verifier.verify(f"Bearer {make_token()}")

    assert SECRET not in repr(verifier)
    assert repr(verifier) == f"TokenVerifier(issuer={ISSUER!r}, audience={AUDIENCE!r}, cached=1)"


def test_verify_returns_token_exp(verifier: TokenVerifier, clock: FakeClock) -> None:
    exp = int(clock.now) + 60
    token = make_token(exp=exp)

    assert verifier.verify(f"Bearer {token}") == exp
    assert verifier.verify(f"Bearer {token}") == exp


def test_check_unexpired_raises_after_exp(verifier: TokenVerifier, clock: FakeClock) -> None:
    exp = verifier.verify(f"Bearer {make_token(exp=int(clock.now) + 60)}")
    verifier.check_unexpired(exp)

    clock.now = exp
    with pytest.raises(Unauthenticated) as raised:
        verifier.check_unexpired(exp)

    assert raised.value.message == "token has expired: mint a new one"


def test_check_unexpired_allows_leeway(clock: FakeClock) -> None:
    verifier = TokenVerifier(JwtSettings(key=SECRET, issuer=ISSUER, audience=AUDIENCE), clock=clock, leeway_s=30)
    exp = verifier.verify(f"Bearer {make_token(exp=int(clock.now) + 60)}")

    clock.now = exp + 29
    verifier.check_unexpired(exp)
    clock.now = exp + 30
    with pytest.raises(Unauthenticated):
        verifier.check_unexpired(exp)


def test_verifier_short_secret_logs_length_once(caplog: pytest.LogCaptureFixture) -> None:
    secret = "short-secret"
    verifier = TokenVerifier(JwtSettings(key=secret, issuer=ISSUER, audience=AUDIENCE))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        token = jwt.encode(claims, secret, algorithm="HS256")

    # pytest turns warnings into errors here, so a PyJWT warning from decode would fail the call.
    verifier.verify(f"Bearer {token}")

    logged = [record for record in caplog.records if record.levelname == "WARNING"]
    assert len(logged) == 1
    assert "PUBLISH_JWT_SECRET is 12 bytes long" in logged[0].getMessage()
    assert secret not in caplog.text


def test_verifier_long_secret_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    TokenVerifier(JwtSettings(key=SECRET, issuer=ISSUER, audience=AUDIENCE))

    assert caplog.records == []
