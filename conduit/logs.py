"""Logging set-up shared by every role: text or JSON lines, ids as fields, no secrets.

Modules log with ``logging.getLogger(__name__)`` and pass ids as fields, for
example ``logger.info("stream ended", extra={"org_id": 1, "channel_id": "…"})``.
The text format appends those fields as ``key=value``; the JSON format writes
them as keys. Access-log lines lose their query string, because subscriber
tokens travel there.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

__all__ = ["RedactQueryFilter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
) | {"message", "asctime", "color_message", "taskName"}


class _TextFormatter(logging.Formatter):
    """Format ``time level logger message key=value ...`` with the ``extra`` fields last."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
        ]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")
        return f"{head} {' '.join(fields)}{newline}{rest}"


class RedactQueryFilter(logging.Filter):
    """Drop the query string from uvicorn access-log records, since it can carry a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record args are (client, method, path, http_version, status).
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, separator, _query = args[2].partition("?")
            if separator:
                record.args = (args[0], args[1], path + "?[redacted]", args[3], args[4])
        return True


def configure_logging(log_format: Literal["text", "json"] = "text", level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in ``log_format``; safe to call more than once."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger", "asctime": "time"},
                reserved_attrs=[*_RECORD_ATTRIBUTES, "color_message"],
            )
        )
    else:
        handler.setFormatter(_TextFormatter())

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    # uvicorn brings its own handlers; route its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, RedactQueryFilter) for existing in access.filters):
        access.addFilter(RedactQueryFilter())
