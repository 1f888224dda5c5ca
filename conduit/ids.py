"""Id formats that both front doors accept, and how an error message quotes a rejected value."""

from __future__ import annotations

import re

__all__ = ["UINT64_DIGITS", "UINT64_MAX", "UUID_PATTERN", "describe_value"]

UINT64_MAX = 2**64 - 1

UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
"""The canonical hyphenated UUID form, in either case; callers lower-case what matches."""

UINT64_DIGITS = re.compile(r"[0-9]{1,20}")
"""ASCII digits only; 20 cover every uint64 and keep int() below its limit on digits (4,300 by default)."""

_PREVIEW_MAX_CHARS = 64


def describe_value(value: str) -> str:
    """Quote ``value`` for an error message, shortened to at most 64 characters plus its length."""
    if len(value) <= _PREVIEW_MAX_CHARS:
        return repr(value)
    return f"{value[:_PREVIEW_MAX_CHARS]!r}... ({len(value)} characters)"
