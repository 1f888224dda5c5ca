"""Exceptions for every outcome the external interface lists, and their status codes.

ConduitError
 +-- InvalidArgument      400  INVALID_ARGUMENT
 +-- Unauthenticated      401  UNAUTHENTICATED
 +-- PermissionDenied     403  PERMISSION_DENIED
 +-- PayloadTooLarge      413  RESOURCE_EXHAUSTED
 +-- RateLimited          429  RESOURCE_EXHAUSTED  (carries retry_after_s)
 +-- BrokerUnavailable    503  UNAVAILABLE
ConfigError                    start-up only: a missing or malformed setting

The HTTP shim, the gRPC service and the gateway all translate through
``HTTP_STATUS`` and ``GRPC_STATUS``, so the front doors cannot drift apart.
"""

from __future__ import annotations

import math

import grpc

__all__ = [
    "GRPC_STATUS",
    "HTTP_STATUS",
    "BrokerUnavailable",
    "ConduitError",
    "ConfigError",
    "InvalidArgument",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "Unauthenticated",
]


class ConduitError(Exception):
    """Base of the errors that a request can end with; ``str(error)`` is safe to send to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ConduitError):
    """A request field, path or query parameter is malformed or inconsistent."""


class Unauthenticated(ConduitError):
    """The bearer token is missing, malformed, expired or wrongly signed."""


class PermissionDenied(ConduitError):
    """The token is valid but its claims do not cover the requested channel."""


class PayloadTooLarge(ConduitError):
    """The encoded request is larger than the configured maximum."""


class RateLimited(ConduitError):
    """The channel has used up its publishes for the current window."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Value for the Retry-After header: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class BrokerUnavailable(ConduitError):
    """The broker could not be reached or timed out."""


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names the variable."""


HTTP_STATUS: dict[type[ConduitError], int] = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    PayloadTooLarge: 413,
    RateLimited: 429,
    BrokerUnavailable: 503,
}

GRPC_STATUS: dict[type[ConduitError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BrokerUnavailable: grpc.StatusCode.UNAVAILABLE,
}
