"""Limits on concurrent SSE connections per client IP address and per token.

A limit of 0 means unlimited. Tokens are counted by their SHA-256 digest, so
the limiter never keeps a token. The IP address is the one the ASGI server
reports: behind a reverse proxy it is the proxy's unless uvicorn trusts the
proxy's forwarded headers (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from conduit.errors import RateLimited
from gateway_http.metrics import REJECTED_CONNECTIONS

__all__ = ["ConnectionLimitExceeded", "ConnectionLimiter", "Lease", "token_digest"]

# Clients that hit a limit may try again once one of their streams closed.
_RETRY_AFTER_S = 1.0


class ConnectionLimitExceeded(RateLimited):
    """A new SSE connection would exceed a concurrent connection limit (HTTP 429)."""


def token_digest(token: str) -> bytes:
    """Return the key under which connections of ``token`` are counted."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(eq=False)
class Lease:
    """One counted connection; ``release`` gives it back, once."""

    limiter: ConnectionLimiter
    ip: str | None
    token: bytes
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.release(self)


class ConnectionLimiter:
    """Counts open SSE connections by IP address and by token, and rejects those over a limit."""

    def __init__(self, *, max_per_ip: int, max_per_token: int) -> None:
        if max_per_ip < 0 or max_per_token < 0:
            raise ValueError(f"connection limits must be at least 0, got {max_per_ip} per IP, {max_per_token} per token")
        self._max_per_ip = max_per_ip
        self._max_per_token = max_per_token
        self._by_ip: dict[str, int] = {}
        self._by_token: dict[bytes, int] = {}

    def acquire(self, ip: str | None, token: bytes) -> Lease:
        """Count one connection of ``ip`` and ``token``; raise ConnectionLimitExceeded, counting nothing, when over a limit."""
        if ip is not None and 0 < self._max_per_ip <= self._by_ip.get(ip, 0):
            REJECTED_CONNECTIONS.labels("ip").inc()
            raise ConnectionLimitExceeded(
                f"too many concurrent connections from {ip}: at most {self._max_per_ip} "
                "(GATEWAY_MAX_CONNECTIONS_PER_IP); close one and retry",
                retry_after_s=_RETRY_AFTER_S,
            )
        if 0 < self._max_per_token <= self._by_token.get(token, 0):
            REJECTED_CONNECTIONS.labels("token").inc()
            raise ConnectionLimitExceeded(
                f"too many concurrent connections with this token: at most {self._max_per_token} "
                "(GATEWAY_MAX_CONNECTIONS_PER_TOKEN); close one and retry",
                retry_after_s=_RETRY_AFTER_S,
            )
        if ip is not None:
            self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        self._by_token[token] = self._by_token.get(token, 0) + 1
        return Lease(self, ip, token)

    def open_connections(self, *, ip: str | None = None, token: bytes | None = None) -> int:
        """Return the connections counted for ``ip`` or for ``token``."""
        if ip is not None:
            return self._by_ip.get(ip, 0)
        if token is not None:
            return self._by_token.get(token, 0)
        raise ValueError("name an ip or a token")

    def release(self, lease: Lease) -> None:
        """Give back the connection of ``lease``; call ``Lease.release`` instead, which does it once."""
        if lease.ip is not None:
            _decrement(self._by_ip, lease.ip)
        _decrement(self._by_token, lease.token)


def _decrement(counts: dict[str, int] | dict[bytes, int], key: str | bytes) -> None:
    # Keys at zero are dropped, so the maps hold only clients with open connections.
    remaining = counts[key] - 1  # type: ignore[index]
    if remaining:
        counts[key] = remaining  # type: ignore[index]
    else:
        del counts[key]  # type: ignore[arg-type]
