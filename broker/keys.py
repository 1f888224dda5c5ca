"""Broker key names, byte-identical to the original Rust services' keys.

``stream:<org_id>:<channel_id>`` contains a channel's entries. Activity tracking
lives in 64 sorted sets ``stream_timestamps:{0}`` to ``stream_timestamps:{63}``
(the braces are literal Redis Cluster hash tags); a stream's shard is
``xxh3_64(stream key) % 64``. Per-channel helper keys embed the whole stream key
as their hash tag, so they share the stream's cluster slot and one Lua script
may touch them together.
"""

from __future__ import annotations

import xxhash

__all__ = [
    "TRACKING_SHARD_COUNT",
    "all_tracking_keys",
    "dedup_key",
    "rate_limit_key",
    "stream_key",
    "stream_log_fields",
    "tracking_key",
]

TRACKING_SHARD_COUNT = 64


def stream_key(org_id: int, channel_id: str) -> str:
    """Return the stream key of a channel; ``channel_id`` must already be a canonical UUID."""
    return f"stream:{org_id}:{channel_id}"


def stream_log_fields(stream: str) -> dict[str, object]:
    """Return the log fields that name a stream: org_id and channel_id, or ``stream`` itself for a key of another form."""
    prefix, _, rest = stream.partition(":")
    org_id, separator, channel_id = rest.partition(":")
    if prefix != "stream" or not separator or not org_id.isdigit():
        return {"stream": stream}
    return {"org_id": int(org_id), "channel_id": channel_id}


def tracking_key(stream: str) -> str:
    """Return the activity-tracking sorted set that contains ``stream``."""
    shard = xxhash.xxh3_64_intdigest(stream.encode()) % TRACKING_SHARD_COUNT
    return f"stream_timestamps:{{{shard}}}"


def all_tracking_keys() -> list[str]:
    """Return every activity-tracking shard key, in shard order."""
    return [f"stream_timestamps:{{{shard}}}" for shard in range(TRACKING_SHARD_COUNT)]


def rate_limit_key(stream: str) -> str:
    """Return the fixed-window publish counter of ``stream``, in the stream's cluster slot."""
    return f"conduit:rate:{{{stream}}}"


def dedup_key(stream: str, message_id: str) -> str:
    """Return the key that stores ``message_id``'s entry id on ``stream``, in the stream's slot."""
    return f"conduit:msg:{{{stream}}}:{message_id}"
