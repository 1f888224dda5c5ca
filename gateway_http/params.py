"""Parse and validate the path and query parameters of a subscribe request.

Each parser raises ``InvalidArgument`` (HTTP 400) with a message that names the
parameter and shows the rejected value, shortened, so a client can see what to fix.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from conduit.errors import InvalidArgument
from conduit.ids import UINT64_DIGITS, UINT64_MAX, UUID_PATTERN, describe_value

__all__ = [
    "parse_channel_id",
    "parse_last_event_id",
    "parse_org_id",
    "parse_query",
]

_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def parse_query(query_string: bytes) -> dict[str, str]:
    """Return the parameters of a raw query string; a repeated name takes its last value, as in Litestar.

    The gateway parses its query itself because Litestar 2.x caches the last
    1,024 query strings it parsed (``litestar._parsers.parse_query_string``),
    and a subscribe query carries the token.
    """
    return dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, separator="&"))


def parse_org_id(raw: str) -> int:
    """Return the organization id of ``raw``, a non-negative integer that fits in 64 bits."""
    if UINT64_DIGITS.fullmatch(raw) is None or int(raw) > UINT64_MAX:
        raise InvalidArgument(f"org_id must be a non-negative 64-bit integer, got {describe_value(raw)}")
    return int(raw)


def parse_channel_id(raw: str | None) -> str:
    """Return ``raw`` as a lower-case UUID; only the canonical hyphenated form is accepted."""
    if raw is None or raw == "":
        raise InvalidArgument("channel_id query parameter is required")
    if UUID_PATTERN.fullmatch(raw) is None:
        raise InvalidArgument(f"channel_id must be a UUID such as 97f58c19-ce38-4c6b-8a5b-47f3405691f0, got {describe_value(raw)}")
    return raw.lower()


def parse_last_event_id(raw: str | None) -> str | None:
    """Return the stream entry id ``<ms>-<seq>`` of ``raw``, or None when ``raw`` is absent or empty."""
    if raw is None or raw == "":
        return None
    match = _STREAM_ID.fullmatch(raw)
    if match is None or int(match[1]) > UINT64_MAX or int(match[2]) > UINT64_MAX:
        raise InvalidArgument(f"Last-Event-ID must be a stream entry id such as 1733350000000-0, got {describe_value(raw)}")
    # Leading zeros would not compare equal to the broker's ids, so normalise them away.
    return f"{int(match[1])}-{int(match[2])}"

