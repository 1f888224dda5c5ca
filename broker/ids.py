"""Stream entry ids ``<ms>-<seq>`` and the checks on a read request, shared by both brokers."""

from __future__ import annotations

import re

from conduit.errors import InvalidArgument

__all__ = ["check_read_request", "format_entry_id", "parse_entry_id"]

_ENTRY_ID = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)
_MAX_PART = 2**64 - 1
_MAX_QUOTED_CHARS = 64


def parse_entry_id(value: str) -> tuple[int, int]:
    """Return ``(ms, seq)`` of an entry id. A bare ``<ms>`` means ``<ms>-0``, as in XREAD.

    Raises InvalidArgument naming the value when it is not two unsigned 64-bit
    integers joined by ``-``.
    """
    match = _ENTRY_ID.fullmatch(value)
    if match is not None:
        ms = int(match.group(1))
        seq = int(match.group(2) or 0)
        if ms <= _MAX_PART and seq <= _MAX_PART:
            return ms, seq
    quoted = value if len(value) <= _MAX_QUOTED_CHARS else value[:_MAX_QUOTED_CHARS] + "..."
    raise InvalidArgument(
        f"invalid entry id {quoted!r}: expected <ms>-<seq> such as 1700000000000-0"
    )


def format_entry_id(ms: int, seq: int) -> str:
    """Return the ``<ms>-<seq>`` text of an entry id."""
    return f"{ms}-{seq}"


def check_read_request(after_id: str, count: int, block_ms: int) -> tuple[int, int]:
    """Return the parsed ``after_id`` once ``count`` and ``block_ms`` are known to be valid.

    Raises InvalidArgument for a malformed id, which can come from a client's
    Last-Event-ID, and ValueError for a count below 1 or a negative block.
    """
    after = parse_entry_id(after_id)
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if block_ms < 0:
        raise ValueError(f"block_ms must be at least 0, got {block_ms}")
    return after
