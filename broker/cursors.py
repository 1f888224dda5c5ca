"""Stream positions that a caller passes to ``Broker.read_many`` again and again."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

__all__ = ["ReadCursors"]


class ReadCursors(MutableMapping[str, str]):
    """Positions of a repeated ``read_many``, with a record of the streams set or removed since a broker last looked.

    Every broker reads it as a plain mapping. ``RedisBroker`` keeps the encoded
    XREAD arguments in ``broker_cache`` between calls and re-encodes only the
    streams that ``changes`` lists, so a read costs what its moved streams cost
    instead of what all its streams cost. One broker at a time should read a
    given instance, because a cache made by one broker is rebuilt by another.
    """

    __slots__ = ("_positions", "_changes", "broker_cache")

    def __init__(self, positions: Iterable[tuple[str, str]] | dict[str, str] = ()) -> None:
        self._positions: dict[str, str] = {}
        # Streams set or deleted since the broker last called clear_changes, in order.
        self._changes: dict[str, None] = {}
        self.broker_cache: Any = None
        """Opaque state of the broker that reads these cursors; None until the first read."""
        self.update(positions)

    def __getitem__(self, stream: str) -> str:
        return self._positions[stream]

    def __setitem__(self, stream: str, position: str) -> None:
        if self._positions.get(stream) == position:
            return
        self._positions[stream] = position
        self._changes[stream] = None

    def __delitem__(self, stream: str) -> None:
        del self._positions[stream]
        self._changes[stream] = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._positions)

    def __len__(self) -> int:
        return len(self._positions)

    def __repr__(self) -> str:
        return f"ReadCursors({self._positions!r})"

    @property
    def changes(self) -> Iterable[str]:
        """Streams set or deleted since the last ``clear_changes``; a deleted stream is no longer a key."""
        return self._changes.keys()

    def clear_changes(self) -> None:
        """Forget the recorded changes, once a broker has applied them to its cache."""
        self._changes.clear()
