"""The exceptions the SDK raises: one base, one subclass per outcome a caller handles differently."""

from __future__ import annotations

__all__ = ["ConduitClientError", "PublishRejected", "PublishUnreachable", "SubscribeFailed"]


class ConduitClientError(Exception):
    """Base of the SDK's errors. ``status`` names the outcome, ``message`` is the server's or our explanation."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def detail(self) -> str:
        """The same text as ``message``; kept for callers of the first client module."""
        return self.message


class PublishRejected(ConduitClientError):
    """The publish service rejected a message.

    ``status`` is ``"HTTP <code>"`` or ``"gRPC <CODE_NAME>"``. ``retry_after_s`` is set
    for HTTP 429 responses.
    """

    def __init__(self, status: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"publish rejected: {self.status}: {self.message}"


class PublishUnreachable(ConduitClientError):
    """The publish service did not respond: the connection failed or the deadline passed.

    ``status`` is ``"unreachable"`` or ``"timeout"``. Whether the message was stored
    is unknown. Sending it again with the same message id is safe, because the
    publish service acknowledges a repeated message id with the first stream id.
    """

    def __str__(self) -> str:
        return f"publish service unreachable: {self.status}: {self.message}"


class SubscribeFailed(ConduitClientError):
    """The gateway rejected the subscription, sent an error event, or stayed unreachable."""

    def __str__(self) -> str:
        return f"subscribe failed: {self.status}: {self.message}"
