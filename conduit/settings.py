"""Settings read once at start-up from the environment into frozen dataclasses.

Variable names follow the original services so a deployment can switch without
renaming. Command-line flags arrive as ``overrides`` keyed by the same names and
win over the environment. A missing or malformed value raises ConfigError with
a one-line message naming the variable; secret values never appear in a repr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from conduit.errors import ConfigError

__all__ = [
    "BrokerSettings",
    "CleanupSettings",
    "JwtSettings",
    "Role",
    "PORT_SETTINGS",
    "Settings",
    "load_settings",
    "pem_path_hint",
    "read_pem",
]

Role = Literal["publish", "gateway", "cleanup", "dev"]
LogFormat = Literal["text", "json"]

PORT_SETTINGS = {
    "publish_port": "PUBLISH_PORT or --publish-port",
    "publish_grpc_port": "PUBLISH_GRPC_PORT or --publish-grpc-port",
    "gateway_port": "GATEWAY_PORT or --gateway-port",
}
"""The variable and flag that choose each port field of ``Settings``, for errors that tell the user what to change."""

# A URL scheme as RFC 3986 section 3.1 defines it, short enough to name in an error.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}")


@dataclass(frozen=True)
class BrokerSettings:
    """Broker connection and the per-channel limits that every broker enforces."""

    redis_url: str | None = field(default=None, repr=False)
    """Redis URL; None selects the embedded in-memory broker (dev only). Hidden from repr: it may carry a password."""
    redis_cluster: bool = False
    max_stream_len: int = 1200
    """Approximate number of entries kept per stream (XADD MAXLEN ~)."""
    rate_limit: int = 20
    """Publishes allowed per channel per window."""
    rate_window_s: int = 1
    stream_ttl_s: int = 120
    """Lifetime of a stream after its END entry."""
    dedup_window_s: int = 300
    """How long a message_id is remembered per channel so a retried publish is not appended twice; 0 disables."""


@dataclass(frozen=True)
class CleanupSettings:
    """Period of the cleanup sweep and the idle time after which an unfinished stream is deleted."""

    interval_s: float = 120
    stream_idle_s: float = 120


@dataclass(frozen=True)
class JwtSettings:
    """Verification key and expected claims for one kind of token."""

    key: str = field(repr=False)
    """HS256 shared secret for publishers, or RS256 public key PEM for subscribers."""
    issuer: str
    audience: str


@dataclass(frozen=True)
class Settings:
    """Everything a role needs, read once at start-up."""

    host: str = "0.0.0.0"
    publish_port: int = 8081
    publish_grpc_port: int = 50051
    gateway_port: int = 8080
    gateway_max_connections_per_ip: int = 0
    """Concurrent SSE connections allowed per client IP address; 0 is unlimited, because clients behind one proxy or NAT share an address."""
    gateway_max_connections_per_token: int = 0
    """Concurrent SSE connections allowed per subscriber token; 0 is unlimited, because a backend may give one channel token to many viewers."""
    max_message_bytes: int = 16384
    log_format: LogFormat = "text"
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)
    publish_jwt: JwtSettings | None = None
    gateway_jwt: JwtSettings | None = None


def load_settings(
    role: Role,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> Settings:
    """Build the settings for ``role`` from ``environ`` (default os.environ) and flag overrides.

    ``serve`` roles require REDIS_URL; the publish role requires the PUBLISH_JWT_*
    variables and the gateway role the GATEWAY_JWT_* ones. The dev role requires
    nothing: it falls back to the embedded broker and generated keys.
    """
    env = _Env(environ if environ is not None else os.environ, overrides or {})
    is_dev = role == "dev"
    env.check_required(_REQUIRED_BY_ROLE.get(role, ()))

    broker = BrokerSettings(
        redis_url=env.url("REDIS_URL", required=not is_dev),
        redis_cluster=env.flag("REDIS_CLUSTER"),
        max_stream_len=env.integer("MAX_STREAM_LEN", 1200, minimum=1),
        rate_limit=env.integer("PUBLISH_RATE_LIMIT", 20, minimum=1),
        rate_window_s=env.integer("PUBLISH_RATE_WINDOW_SEC", 1, minimum=1),
        stream_ttl_s=env.integer("STREAM_TTL_SEC", 120, minimum=1),
        dedup_window_s=env.integer("PUBLISH_DEDUP_WINDOW_SEC", 300, minimum=0),
    )
    cleanup = CleanupSettings(
        interval_s=env.integer("CLEANUP_INTERVAL_SEC", 120, minimum=1),
        stream_idle_s=env.integer("CLEANUP_STREAM_IDLE_SEC", 120, minimum=1),
    )

    publish_jwt = None
    if role == "publish" or (is_dev and env.get("PUBLISH_JWT_SECRET")):
        publish_jwt = JwtSettings(
            key=env.required("PUBLISH_JWT_SECRET"),
            issuer=env.required("PUBLISH_JWT_ISSUER"),
            audience=env.required("PUBLISH_JWT_AUDIENCE"),
        )
    gateway_jwt = None
    if role == "gateway" or (is_dev and env.get("GATEWAY_JWT_PUBLIC_KEY")):
        gateway_jwt = JwtSettings(
            key=env.public_key("GATEWAY_JWT_PUBLIC_KEY"),
            issuer=env.required("GATEWAY_JWT_ISSUER"),
            audience=env.required("GATEWAY_JWT_AUDIENCE"),
        )

    return Settings(
        host=env.get("CONDUIT_HOST") or ("127.0.0.1" if is_dev else "0.0.0.0"),
        publish_port=env.port("PUBLISH_PORT", 8081),
        publish_grpc_port=env.port("PUBLISH_GRPC_PORT", 50051),
        gateway_port=env.port("GATEWAY_PORT", 8080),
        gateway_max_connections_per_ip=env.integer("GATEWAY_MAX_CONNECTIONS_PER_IP", 0, minimum=0),
        gateway_max_connections_per_token=env.integer("GATEWAY_MAX_CONNECTIONS_PER_TOKEN", 0, minimum=0),
        max_message_bytes=env.integer("MAX_MESSAGE_BYTES", 16384, minimum=1),
        log_format=env.choice("LOG_FORMAT", ("text", "json"), "text"),  # type: ignore[arg-type]
        broker=broker,
        cleanup=cleanup,
        publish_jwt=publish_jwt,
        gateway_jwt=gateway_jwt,
    )


def read_pem(value: str, name: str) -> str:
    """Return PEM text from ``value``, which is the text itself or ``@path`` naming a file.

    Escaped newlines (``\\n``), common when a PEM is pasted into one environment
    line, are turned into real ones.
    """
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            value = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{name}: cannot read PEM file {str(path)!r}: {error}") from error
    return value.replace("\\n", "\n")


def pem_path_hint(value: str) -> str:
    """Return advice to append to a PEM error when ``value`` looks like a file path, else ``""``.

    A path given without its ``@`` is read as PEM text and fails to parse,
    which a bare "not a PEM key" message does not explain.
    """
    if value.startswith("@") or "-----BEGIN" in value:
        return ""
    return "; to read the key from a file, put @ before its path, as in @subscriber.pub"


_REQUIRED_BY_ROLE: dict[str, tuple[str, ...]] = {
    "publish": ("REDIS_URL", "PUBLISH_JWT_SECRET", "PUBLISH_JWT_ISSUER", "PUBLISH_JWT_AUDIENCE"),
    "gateway": ("REDIS_URL", "GATEWAY_JWT_PUBLIC_KEY", "GATEWAY_JWT_ISSUER", "GATEWAY_JWT_AUDIENCE"),
    "cleanup": ("REDIS_URL",),
}
"""Variables each ``serve`` role cannot start without, checked together so one run names them all."""


class _Env:
    """Typed reads of one environment mapping, with flag overrides on top."""

    def __init__(self, environ: Mapping[str, str], overrides: Mapping[str, str | None]) -> None:
        self._environ = environ
        self._overrides = {name: value for name, value in overrides.items() if value is not None}

    def get(self, name: str) -> str | None:
        value = self._overrides.get(name, self._environ.get(name))
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def check_required(self, names: tuple[str, ...]) -> None:
        """Raise one ConfigError that names every variable of ``names`` that is not set."""
        missing = [name for name in names if self.get(name) is None]
        if len(missing) == 1:
            raise ConfigError(f"{missing[0]} is required but not set")
        if missing:
            raise ConfigError(f"{', '.join(missing[:-1])} and {missing[-1]} are required but not set")

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigError(f"{name} is required but not set")
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        return value

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default, minimum=0)
        if value > 65535:
            raise ConfigError(f"{name} must be a port number from 0 to 65535, got {value}")
        return value

    def flag(self, name: str) -> bool:
        raw = self.get(name)
        if raw is None:
            return False
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.get(name)
        if raw is None:
            return default
        if raw not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    def url(self, name: str, *, required: bool) -> str | None:
        raw = self.required(name) if required else self.get(name)
        if raw is None:
            return None
        scheme, separator, rest = raw.partition("://")
        if not separator or scheme not in ("redis", "rediss", "unix") or not rest:
            # The URL is not echoed, because it may carry a password. A short scheme cannot.
            if not separator or not _SCHEME.fullmatch(scheme):
                found = "a value without a scheme"
            elif not rest:
                found = f"{scheme}:// with no address after it"
            else:
                found = f"the scheme {scheme}://"
            raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL, got {found}")
        return raw

    def public_key(self, name: str) -> str:
        raw = self.required(name)
        pem = read_pem(raw, name)
        try:
            load_pem_public_key(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError, TypeError):
            raise ConfigError(f"{name} is not a PEM-encoded public key{pem_path_hint(raw)}") from None
        return pem
