"""XREAD over many streams for ``RedisBroker``: arguments encoded once per stream, and the entries of a reply.

A read over 1,000 streams passes 2,000 arguments. Checking, encoding and
packing them on every call cost about 1.6 ms of client CPU per read with
nothing new, and about 0.13 ms with the arguments kept (a loop of
``read_many`` against a private redis-server, redis-py 8.2, 2-CPU VM).
``EncodedStreams`` keeps each stream's key and id encoded, as complete RESP
bulk strings on a single Redis, and re-encodes only the streams whose
position changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from broker.ids import format_entry_id, parse_entry_id

__all__ = ["EncodedStreams", "RawEntry", "canonical_entry_id", "data_field", "entries_of_reply"]

# Entry ids in the form Redis writes them: no leading zeros, both parts below
# 10**19 and so within 64 bits. They pass through unparsed, because a reader
# resumes from ids this broker returned.
_CANONICAL_ENTRY_ID = re.compile(r"(?:0|[1-9][0-9]{0,18})-(?:0|[1-9][0-9]{0,18})", re.ASCII)

RawEntry = tuple[bytes, Any]
"""An entry of an XREAD reply: its id and its fields, as a flat list or as a dict."""


def canonical_entry_id(after_id: str) -> str:
    """Return ``after_id`` in Redis's own form; raise InvalidArgument when it is malformed."""
    if _CANONICAL_ENTRY_ID.fullmatch(after_id):
        return after_id
    return format_entry_id(*parse_entry_id(after_id))


def _bulk_string(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _as_is(value: bytes) -> bytes:
    return value


class EncodedStreams:
    """The keys and ids of one multi-stream XREAD, encoded, in one order.

    With ``packed``, each key and id is a complete RESP bulk string, and
    ``packed_command`` joins them behind a header for ``send_packed_command``.
    Without it they are plain bytes for redis-py's ``execute_command``, which
    the cluster client needs in order to route the command.
    With ``slot_of``, every stream must map to the same value (the Redis
    Cluster hash slot), because one XREAD cannot span slots.
    """

    def __init__(self, owner: object, *, packed: bool, slot_of: Callable[[str], int] | None) -> None:
        self.owner = owner
        self._encode = _bulk_string if packed else _as_is
        self._slot_of = slot_of
        # Both dicts gain and lose the same streams in the same calls, so their orders match.
        self.keys: dict[str, bytes] = {}
        self.ids: dict[str, bytes] = {}
        self._slot: int | None = None
        self._joined_keys: bytes | None = None
        self._joined_ids: bytes | None = None

    def apply(self, positions: Mapping[str, str], streams: Iterable[str]) -> None:
        """Bring ``streams`` in line with ``positions``: encode those present and drop those absent.

        Raises InvalidArgument for a malformed position and ValueError for
        streams of different hash slots, and then leaves the encoding unchanged.
        """
        updates: dict[str, bytes | None] = {}
        for stream in streams:
            position = positions.get(stream)
            updates[stream] = None if position is None else canonical_entry_id(position).encode()
        if self._slot_of is not None:
            self._check_one_slot(updates, len(positions))

        for stream, encoded_id in updates.items():
            if encoded_id is None:
                if self.keys.pop(stream, None) is not None:
                    del self.ids[stream]
                    self._joined_keys = None
                continue
            if stream not in self.keys:
                self.keys[stream] = self._encode(stream.encode())
                self._joined_keys = None
            self.ids[stream] = self._encode(encoded_id)
        if updates:
            self._joined_ids = None

    def packed_command(self, count: int, block_ms: int | None) -> list[bytes]:
        """Return ``XREAD COUNT count [BLOCK block_ms] STREAMS keys... ids...`` in the Redis protocol."""
        head = [b"XREAD", *_options(count, block_ms)]
        header = b"*%d\r\n" % (len(head) + 2 * len(self.keys)) + b"".join(map(_bulk_string, head))
        if self._joined_keys is None:
            self._joined_keys = b"".join(self.keys.values())
        if self._joined_ids is None:
            self._joined_ids = b"".join(self.ids.values())
        return [header, self._joined_keys, self._joined_ids]

    def arguments(self, count: int, block_ms: int | None) -> list[str | bytes]:
        """Return the same XREAD as arguments for ``execute_command``; only for an instance made without ``packed``."""
        return ["XREAD", *_options(count, block_ms), *self.keys.values(), *self.ids.values()]

    def _check_one_slot(self, updates: Mapping[str, bytes | None], stream_count: int) -> None:
        assert self._slot_of is not None
        removed = sum(1 for stream, encoded_id in updates.items() if encoded_id is None and stream in self.keys)
        slots = {self._slot_of(stream) for stream, encoded_id in updates.items() if encoded_id is not None and stream not in self.keys}
        if self._slot is not None and len(self.keys) > removed:
            slots.add(self._slot)
        if len(slots) > 1:
            raise ValueError(
                f"read_many streams must share one read_group, got {stream_count} streams "
                f"in {len(slots)} Redis Cluster hash slots; group them with read_group first"
            )
        if slots:
            self._slot = next(iter(slots))


def _options(count: int, block_ms: int | None) -> list[bytes]:
    options = [b"COUNT", b"%d" % count]
    if block_ms is not None:
        options += [b"BLOCK", b"%d" % block_ms]
    options.append(b"STREAMS")
    return options


def entries_of_reply(reply: Any) -> Iterable[tuple[bytes | str, list[RawEntry]]]:
    """Return the (stream, entries) pairs of an XREAD reply in RESP2 (list) or RESP3 (map) form."""
    if not reply:
        return ()
    if isinstance(reply, dict):
        return reply.items()
    return reply


def data_field(fields: Any) -> bytes | None:
    """Return the ``data`` field of an entry's fields (a flat list or a dict), or None without one."""
    if not fields:
        return None
    if isinstance(fields, dict):
        return fields.get(b"data")
    # The publisher writes ``data`` as the only field, so the first pair is the usual match.
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == b"data":
            return fields[index + 1]
    return None
