"""Parse and validate the path and query parameters of a subscribe request.

Each parser raises ``InvalidArgument`` (HTTP 400) with a message that names the
parameter and shows the rejected value, shortened, so a client can see what to fix.
"""

from __future__ import annotations

import re

from conduit.errors import InvalidArgument

__all__ = [
    "MAX_UINT64",
    "parse_channel_id",
    "parse_last_event_id",
    "parse_org_id",
]

MAX_UINT64 = 2**64 - 1

# 20 digits cover every 64-bit value and keep int() away from its digit limit.
_DIGITS = re.compile(r"[0-9]{1,20}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")

# Maximum characters of a rejected value that an error message repeats.
_ECHO_MAX_CHARS = 64


def parse_org_id(raw: str) -> int:
    """Return the organization id of ``raw``, a non-negative integer that fits in 64 bits."""
    if _DIGITS.fullmatch(raw) is None or int(raw) > MAX_UINT64:
        raise InvalidArgument(f"org_id must be a non-negative 64-bit integer, got {_echo(raw)}")
    return int(raw)


def parse_channel_id(raw: str | None) -> str:
    """Return ``raw`` as a lower-case UUID; only the canonical hyphenated form is accepted."""
    if raw is None or raw == "":
        raise InvalidArgument("channel_id query parameter is required")
    if _UUID.fullmatch(raw) is None:
        raise InvalidArgument(f"channel_id must be a UUID such as 97f58c19-ce38-4c6b-8a5b-47f3405691f0, got {_echo(raw)}")
    return raw.lower()


def parse_last_event_id(raw: str | None) -> str | None:
    """Return the stream entry id ``<ms>-<seq>`` of ``raw``, or None when ``raw`` is absent or empty."""
    if raw is None or raw == "":
        return None
    match = _STREAM_ID.fullmatch(raw)
    if match is None or int(match[1]) > MAX_UINT64 or int(match[2]) > MAX_UINT64:
        raise InvalidArgument(f"Last-Event-ID must be a stream entry id such as 1733350000000-0, got {_echo(raw)}")
    # Leading zeros would not compare equal to the broker's ids, so normalise them away.
    return f"{int(match[1])}-{int(match[2])}"


def _echo(raw: str) -> str:
    """Return ``raw`` quoted for an error message, cut to a bounded length."""
    if len(raw) > _ECHO_MAX_CHARS:
        return repr(raw[:_ECHO_MAX_CHARS]) + "…"
    return repr(raw)
