"""The steps of one publish that both front doors share: authenticate, validate, append."""

from __future__ import annotations

import asyncio

from broker.base import AppendManyResult, Broker, NewEntry
from conduit.errors import BrokerUnavailable
from publish_grpc.append_deadlines import AppendDeadlines
from publish_grpc.auth import TokenVerifier
from publish_grpc.observe import FrontDoor, PublishAttempt
from publish_grpc.validation import PathIds, ValidatedPublish, check_request, decode_request

__all__ = ["APPEND_TIMEOUT_S", "Publisher"]

APPEND_TIMEOUT_S = 5.0
"""Deadline for one ``Broker.append``, above the broker's own socket timeouts."""


class Publisher:
    """Turn an authenticated, encoded PublishRequest into a broker entry."""

    def __init__(
        self,
        broker: Broker,
        verifier: TokenVerifier,
        *,
        max_message_bytes: int,
        append_timeout_s: float = APPEND_TIMEOUT_S,
    ) -> None:
        self.broker = broker
        self.max_message_bytes = max_message_bytes
        self._verifier = verifier
        self._append_timeout_s = append_timeout_s
        self._append_deadlines = AppendDeadlines(append_timeout_s)

    def attempt(self, front_door: FrontDoor) -> PublishAttempt:
        """Return the context manager that records one publish's metrics and rejection log."""
        return PublishAttempt(front_door)

    def authenticate(self, authorization: str | None) -> int:
        """Return the token's ``exp`` when ``authorization`` is ``Bearer <valid token>``; raise Unauthenticated otherwise."""
        return self._verifier.verify(authorization)

    def check_unexpired(self, expires_at: int) -> None:
        """Raise Unauthenticated once a token that ``authenticate`` accepted with this ``exp`` has expired."""
        self._verifier.check_unexpired(expires_at)

    async def publish(
        self,
        attempt: PublishAttempt,
        data: bytes,
        *,
        path: PathIds | None = None,
    ) -> str:
        """Validate ``data`` and append it to its channel's stream; return the entry id.

        Every check runs before the broker is called, so a request that raises
        InvalidArgument or PayloadTooLarge leaves nothing behind. RateLimited
        also leaves nothing, because the broker checks the limit and appends
        in one atomic step. After BrokerUnavailable for a missed deadline, the
        entry may or may not be stored, and a retry with the same message_id
        within the broker's dedup window returns the stored entry's id instead
        of appending it again.
        """
        return await self.append(self.validate(attempt, data, path=path))

    async def append(self, publish: ValidatedPublish) -> str:
        """Append a validated publish under the append deadline and return the entry id; raise as ``publish`` does."""
        # asyncio.timeout rather than wait_for, which on Python 3.11 runs the
        # append in a task of its own: a measurable cost per publish.
        try:
            async with asyncio.timeout(self._append_timeout_s):
                return await self.broker.append(
                    publish.stream_key, publish.data, end=publish.end, message_id=publish.message_id
                )
        except TimeoutError:
            raise self.append_timeout_error() from None

    def append_nowait(self, publish: ValidatedPublish) -> asyncio.Future[str] | None:
        """Start the append of a validated publish without awaiting, or return None when ``append`` must run.

        The future resolves as ``append`` would, except that it is cancelled
        when the append deadline passes first, where ``append`` raises
        ``append_timeout_error()``. The cancel comes up to a tenth of the
        timeout late, plus any delay of the event loop (``AppendDeadlines``).
        An END takes ``append``, because the broker untracks its stream after
        storing it.
        """
        if publish.end:
            return None
        future = self.broker.append_nowait(publish.stream_key, publish.data, message_id=publish.message_id)
        if future is not None and not future.done():
            # The broker bounds each batch by its socket timeout, but an append may wait for
            # a batch ahead of it, a script reload or a retracking, which together can take longer.
            self._append_deadlines.watch(future)
        return future

    def append_timeout_error(self) -> BrokerUnavailable:
        """Build the error for an append that missed the append deadline, as ``append`` raises it."""
        return BrokerUnavailable(
            f"broker timed out after {self._append_timeout_s:g} s; the message may or may not be stored"
        )

    def validate(self, attempt: PublishAttempt, data: bytes, *, path: PathIds | None = None) -> ValidatedPublish:
        """Decode and check ``data`` without awaiting, noting the ids on ``attempt``; raise what ``publish`` would."""
        request = decode_request(data, max_message_bytes=self.max_message_bytes)
        attempt.note_request(request)
        publish = check_request(request, data, path=path)
        attempt.note_publish(publish)
        return publish

    async def append_many(self, stream_key: str, publishes: list[ValidatedPublish]) -> AppendManyResult:
        """Append validated publishes of one stream in order with ``Broker.append_many``, under the append deadline.

        The first rate-limited publish and the ones after it are not stored,
        and the result names the RateLimited error. After BrokerUnavailable
        for a missed deadline, the publishes may or may not be stored.
        """
        entries = [NewEntry(publish.data, publish.end, publish.message_id) for publish in publishes]
        try:
            async with asyncio.timeout(self._append_timeout_s):
                return await self.broker.append_many(stream_key, entries)
        except TimeoutError:
            raise BrokerUnavailable(
                f"broker timed out after {self._append_timeout_s:g} s; the messages may or may not be stored"
            ) from None
