"""``conduit token``: tokens minted from the dev keys or the configured keys verify and carry the claims."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from conduit.cli import main
from conduit.dev_keys import DevKeys
from conduit.tokens import generate_rsa_key_pair

CHANNEL_ID = "97f58c19-ce38-4c6b-8a5b-47f3405691f0"


def _printed_token(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr().out
    assert out.count("\n") == 1, f"expected the token alone on one line, got {out!r}"
    return out.strip()


def test_token_publish_from_dev_keys_verifies(
    dev_keys: DevKeys, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["token", "publish", "--state-dir", str(state_dir), "--ttl-s", "60"])

    claims = jwt.decode(
        _printed_token(capsys), dev_keys.publish_secret, algorithms=["HS256"],
        audience=dev_keys.publish_audience, issuer=dev_keys.issuer,
    )
    assert status == 0
    assert claims["exp"] - claims["iat"] == 60


def test_token_subscribe_from_dev_keys_carries_channel(
    dev_keys: DevKeys, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([
        "token", "subscribe", "--org-id", "42", "--channel-id", CHANNEL_ID.upper(), "--state-dir", str(state_dir),
    ])

    claims = jwt.decode(
        _printed_token(capsys), dev_keys.subscriber_public_key, algorithms=["RS256"],
        audience=dev_keys.gateway_audience, issuer=dev_keys.issuer,
    )
    assert status == 0
    assert claims["org_id"] == 42
    assert claims["channel_id"] == CHANNEL_ID


def test_token_publish_from_environment(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PUBLISH_JWT_SECRET", "s3cret-for-tests-0123456789abcdefghij")
    monkeypatch.setenv("PUBLISH_JWT_ISSUER", "backend")
    monkeypatch.setenv("PUBLISH_JWT_AUDIENCE", "conduit")

    status = main(["token", "publish", "--state-dir", str(state_dir)])

    claims = jwt.decode(
        _printed_token(capsys), "s3cret-for-tests-0123456789abcdefghij", algorithms=["HS256"], audience="conduit", issuer="backend"
    )
    assert status == 0
    assert claims["iss"] == "backend"
    assert not state_dir.exists(), "configured keys must not create dev keys"


def test_token_subscribe_from_private_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_pem, public_pem = generate_rsa_key_pair()
    key_file = tmp_path / "private.pem"
    key_file.write_text(private_pem)
    monkeypatch.setenv("GATEWAY_JWT_PRIVATE_KEY", f"@{key_file}")
    monkeypatch.setenv("GATEWAY_JWT_ISSUER", "backend")
    monkeypatch.setenv("GATEWAY_JWT_AUDIENCE", "browsers")

    status = main(["token", "subscribe", "--org-id", "3", "--channel-id", CHANNEL_ID, "--state-dir", str(state_dir)])

    claims = jwt.decode(_printed_token(capsys), public_pem, algorithms=["RS256"], audience="browsers", issuer="backend")
    assert status == 0
    assert claims["org_id"] == 3
    assert claims["channel_id"] == CHANNEL_ID


def test_token_publish_short_secret_warns(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PUBLISH_JWT_SECRET", "short-secret")
    monkeypatch.setenv("PUBLISH_JWT_ISSUER", "backend")
    monkeypatch.setenv("PUBLISH_JWT_AUDIENCE", "conduit")

    status = main(["token", "publish", "--state-dir", str(state_dir)])

    printed = capsys.readouterr()
    err = printed.err
    assert status == 0
    assert printed.out.strip().count(".") == 2
    assert "warning: PUBLISH_JWT_SECRET is 12 bytes long, below the 32 bytes" in err
    assert "short-secret" not in err
    assert "site-packages" not in err


def test_token_publish_missing_issuer_exits_2(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PUBLISH_JWT_SECRET", "s3cret-for-tests-0123456789abcdefghij")
    monkeypatch.setenv("PUBLISH_JWT_AUDIENCE", "conduit")

    status = main(["token", "publish", "--state-dir", str(state_dir)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err == "conduit token: PUBLISH_JWT_ISSUER is required but not set\n"
    assert "s3cret" not in captured.err


def test_token_publish_names_every_missing_claim(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PUBLISH_JWT_SECRET", "s3cret-for-tests-0123456789abcdefghij")

    status = main(["token", "publish", "--state-dir", str(state_dir)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == "conduit token: PUBLISH_JWT_ISSUER and PUBLISH_JWT_AUDIENCE are required but not set\n"


def test_token_subscribe_bad_private_key_exits_2(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nnot a key\n")
    monkeypatch.setenv("GATEWAY_JWT_ISSUER", "backend")
    monkeypatch.setenv("GATEWAY_JWT_AUDIENCE", "browsers")

    status = main(["token", "subscribe", "--org-id", "3", "--channel-id", CHANNEL_ID, "--state-dir", str(state_dir)])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert "GATEWAY_JWT_PRIVATE_KEY is not" in err
    assert "not a key" not in err


def test_token_subscribe_key_path_without_at(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_PRIVATE_KEY", "subscriber.key")
    monkeypatch.setenv("GATEWAY_JWT_ISSUER", "backend")
    monkeypatch.setenv("GATEWAY_JWT_AUDIENCE", "browsers")

    status = main(["token", "subscribe", "--org-id", "3", "--channel-id", CHANNEL_ID, "--state-dir", str(state_dir)])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert "GATEWAY_JWT_PRIVATE_KEY is not an unencrypted PEM-encoded RSA private key" in err
    assert "put @ before its path" in err


def test_token_subscribe_bad_pem_has_no_path_hint(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nnot a key\n")
    monkeypatch.setenv("GATEWAY_JWT_ISSUER", "backend")
    monkeypatch.setenv("GATEWAY_JWT_AUDIENCE", "browsers")

    status = main(["token", "subscribe", "--org-id", "3", "--channel-id", CHANNEL_ID, "--state-dir", str(state_dir)])

    assert status == 2
    assert "@" not in capsys.readouterr().err


def test_token_without_any_keys_exits_2(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["token", "publish", "--state-dir", str(state_dir)])

    err = capsys.readouterr().err
    assert status == 2
    assert "no dev keys" in err
    assert "conduit dev" in err
    assert not state_dir.exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--channel-id", "not-a-uuid", "must be a UUID"),
        ("--channel-id", "97f58c19ce384c6b8a5b47f3405691f0", "must be a UUID"),
        ("--org-id", "-1", "must be a non-negative 64-bit integer"),
        ("--org-id", str(2**64), "must be a non-negative 64-bit integer"),
    ],
)
def test_token_subscribe_bad_ids_exit_2(
    dev_keys: DevKeys, state_dir: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    args = {"--org-id": "1", "--channel-id": CHANNEL_ID, flag: value}

    status = main([
        "token", "subscribe", "--org-id", args["--org-id"], "--channel-id", args["--channel-id"],
        "--state-dir", str(state_dir),
    ])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert message in captured.err
    assert flag in captured.err


def test_token_publish_claims_without_secret_exits_2(
    monkeypatch: pytest.MonkeyPatch, dev_keys: DevKeys, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PUBLISH_JWT_SECRET", raising=False)
    monkeypatch.setenv("PUBLISH_JWT_ISSUER", "backend")
    monkeypatch.setenv("PUBLISH_JWT_AUDIENCE", "conduit")

    status = main(["token", "publish", "--state-dir", str(state_dir)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err == (
        "conduit token: PUBLISH_JWT_ISSUER and PUBLISH_JWT_AUDIENCE are set but PUBLISH_JWT_SECRET is not:"
        " set PUBLISH_JWT_SECRET too, or unset them to mint from the dev keys\n"
    )


def test_token_subscribe_issuer_without_key_exits_2(
    monkeypatch: pytest.MonkeyPatch, dev_keys: DevKeys, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_JWT_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("GATEWAY_JWT_AUDIENCE", raising=False)
    monkeypatch.setenv("GATEWAY_JWT_ISSUER", "backend")

    status = main(["token", "subscribe", "--org-id", "3", "--channel-id", CHANNEL_ID, "--state-dir", str(state_dir)])

    err = capsys.readouterr().err
    assert status == 2
    assert "GATEWAY_JWT_ISSUER is set but GATEWAY_JWT_PRIVATE_KEY is not" in err


@pytest.mark.parametrize("ttl", ["0", "-5", "1.5"])
def test_token_bad_ttl_names_value(ttl: str, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["token", "publish", "--state-dir", str(state_dir), f"--ttl-s={ttl}"])

    assert status == 2
    assert f"--ttl-s: must be a positive integer, got '{ttl}'" in capsys.readouterr().err
