"""Dev keys: generated once with private file modes, reused afterwards, clear errors otherwise."""

from __future__ import annotations

import stat
from pathlib import Path

import jwt
import pytest

from conduit.dev_keys import dev_keys_path, load_dev_keys, load_or_create_dev_keys
from conduit.errors import ConfigError


def test_dev_keys_created_with_private_modes(state_dir: Path) -> None:
    load_or_create_dev_keys(state_dir)

    path = dev_keys_path(state_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert [entry.name for entry in state_dir.iterdir()] == ["dev-keys.json"]


def test_dev_keys_reused_on_next_start(state_dir: Path) -> None:
    first = load_or_create_dev_keys(state_dir)
    second = load_or_create_dev_keys(state_dir)

    assert second == first


def test_dev_keys_sign_tokens_that_verify(state_dir: Path) -> None:
    keys = load_or_create_dev_keys(state_dir)

    publisher = jwt.decode(
        keys.publisher_token(), keys.publish_secret, algorithms=["HS256"],
        audience=keys.publish_audience, issuer=keys.issuer,
    )
    subscriber = jwt.decode(
        keys.subscriber_token(7, "97f58c19-ce38-4c6b-8a5b-47f3405691f0"), keys.subscriber_public_key,
        algorithms=["RS256"], audience=keys.gateway_audience, issuer=keys.issuer,
    )

    assert publisher["exp"] > publisher["iat"]
    assert subscriber["org_id"] == 7
    assert subscriber["channel_id"] == "97f58c19-ce38-4c6b-8a5b-47f3405691f0"


def test_dev_keys_repr_hides_keys(state_dir: Path) -> None:
    keys = load_or_create_dev_keys(state_dir)

    assert keys.publish_secret not in repr(keys)
    assert "PRIVATE KEY" not in repr(keys)


def test_load_dev_keys_missing_file_names_path(state_dir: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_dev_keys(state_dir)

    assert str(dev_keys_path(state_dir)) in str(raised.value)
    assert "conduit dev" in str(raised.value)


@pytest.mark.parametrize("content", ["not json", "[]", '{"publish_secret": "x"}', '{"publish_secret": "", '
                                     '"subscriber_private_key": "a", "subscriber_public_key": "b"}'])
def test_load_dev_keys_invalid_file_names_path(state_dir: Path, content: str) -> None:
    state_dir.mkdir()
    dev_keys_path(state_dir).write_text(content)

    with pytest.raises(ConfigError) as raised:
        load_or_create_dev_keys(state_dir)

    assert str(dev_keys_path(state_dir)) in str(raised.value)
    assert "not valid" in str(raised.value)
