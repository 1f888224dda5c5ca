"""Keys for ``conduit dev``: generated on the first start, kept in one local file, reused after.

The file (default ``./.conduit/dev-keys.json``, mode 0600 in a 0700 folder)
contains the HS256 publisher secret, the RS256 key pair for subscriber tokens and
the issuer and audiences both kinds of token carry. These keys protect nothing
of value: they exist so that tokens minted by ``conduit token`` in one terminal
are accepted by ``conduit dev`` in another, across restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from conduit.errors import ConfigError
from conduit.tokens import generate_rsa_key_pair, mint_publisher_token, mint_subscriber_token

__all__ = ["DEFAULT_STATE_DIR", "DevKeys", "dev_keys_path", "load_dev_keys", "load_or_create_dev_keys"]

DEFAULT_STATE_DIR = Path(".conduit")
_FILE_NAME = "dev-keys.json"
_ISSUER = "conduit-dev"
_PUBLISH_AUDIENCE = "conduit-publish"
_GATEWAY_AUDIENCE = "conduit-gateway"


@dataclass(frozen=True)
class DevKeys:
    """The dev keys and the claims that tokens minted from them carry."""

    publish_secret: str = field(repr=False)
    subscriber_private_key: str = field(repr=False)
    subscriber_public_key: str = field(repr=False)
    issuer: str = _ISSUER
    publish_audience: str = _PUBLISH_AUDIENCE
    gateway_audience: str = _GATEWAY_AUDIENCE

    def publisher_token(self, ttl_s: int = 3600) -> str:
        """Return an HS256 publisher token that ``conduit dev`` accepts."""
        return mint_publisher_token(
            self.publish_secret, issuer=self.issuer, audience=self.publish_audience, ttl_s=ttl_s
        )

    def subscriber_token(self, org_id: int, channel_id: str, ttl_s: int = 3600) -> str:
        """Return an RS256 subscriber token for one channel that ``conduit dev`` accepts."""
        return mint_subscriber_token(
            self.subscriber_private_key,
            issuer=self.issuer,
            audience=self.gateway_audience,
            org_id=org_id,
            channel_id=channel_id,
            ttl_s=ttl_s,
        )


def dev_keys_path(state_dir: Path) -> Path:
    """Return the path of the dev keys file inside ``state_dir``."""
    return state_dir / _FILE_NAME


def load_dev_keys(state_dir: Path) -> DevKeys:
    """Read the dev keys from ``state_dir``; raise ConfigError when the file is missing or invalid."""
    path = dev_keys_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no dev keys in {str(path)!r}: start `conduit dev` once to create them, "
            "or pass --state-dir with the folder that `conduit dev` uses"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read dev keys file {str(path)!r}: {error.strerror}") from None
    return _parse(text, path)


def load_or_create_dev_keys(state_dir: Path) -> DevKeys:
    """Read the dev keys from ``state_dir``, generating and saving them first when absent.

    Two processes starting at once end up with the same keys: the file is
    written under a temporary name and linked into place only if no file exists yet.
    """
    path = dev_keys_path(state_dir)
    if path.exists():
        return load_dev_keys(state_dir)

    private_pem, public_pem = generate_rsa_key_pair()
    keys = DevKeys(
        publish_secret=secrets.token_urlsafe(32),
        subscriber_private_key=private_pem,
        subscriber_public_key=public_pem,
    )
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_new(path, json.dumps(asdict(keys), indent=2) + "\n")
    except OSError as error:
        raise ConfigError(f"cannot write dev keys file {str(path)!r}: {error.strerror}") from None
    return load_dev_keys(state_dir)


def _write_new(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        # link() fails when another process created the file first; its keys win.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _parse(text: str, path: Path) -> DevKeys:
    try:
        raw = json.loads(text)
        keys = DevKeys(
            publish_secret=raw["publish_secret"],
            subscriber_private_key=raw["subscriber_private_key"],
            subscriber_public_key=raw["subscriber_public_key"],
            issuer=raw.get("issuer", _ISSUER),
            publish_audience=raw.get("publish_audience", _PUBLISH_AUDIENCE),
            gateway_audience=raw.get("gateway_audience", _GATEWAY_AUDIENCE),
        )
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"dev keys file {str(path)!r} is not valid: delete it and `conduit dev` creates new keys"
        ) from None
    fields = (keys.publish_secret, keys.subscriber_private_key, keys.subscriber_public_key)
    if not all(isinstance(value, str) and value for value in fields):
        raise ConfigError(
            f"dev keys file {str(path)!r} is not valid: delete it and `conduit dev` creates new keys"
        )
    return keys
