"""Routes that only ``conduit dev`` adds to the gateway: the demo page and two JSON endpoints.

``POST /dev/start-stream`` returns what the TypeScript client expects from its
``startStreamUrl``: a subscriber token, the channel and the events URL.
``POST /dev/demo-stream`` publishes a demo stream to a channel. Nothing here
checks credentials, which is why ``conduit serve`` never mounts these routes.
Dev mode builds the gateway with CORS open to every origin and method, preflight
included, so a front end served from another local port can call them.
"""

from __future__ import annotations

import json
import uuid
from importlib import resources
from typing import Any

from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from conduit.sdk import DEFAULT_DEMO_TEXT
from conduit.dev_demo import DemoStreams, TooManyDemoStreams
from conduit.dev_keys import DevKeys

__all__ = ["MAX_DEMO_TEXT_CHARS", "dev_route_handlers"]

MAX_DEMO_TEXT_CHARS = 2000
_MAX_BODY_BYTES = 64 * 1024
_MAX_ORG_ID = 2**64 - 1
_SUBSCRIBER_TOKEN_TTL_S = 3600


class _BadRequest(Exception):
    """The request body is invalid. The message names the field and the reason."""


def dev_route_handlers(keys: DevKeys, demos: DemoStreams) -> list[HTTPRouteHandler]:
    """Build the dev-only handlers that sign tokens with ``keys`` and publish through ``demos``."""
    page = resources.files("conduit").joinpath("static/demo.html").read_text(encoding="utf-8")

    @get("/", media_type="text/html", sync_to_thread=False, include_in_schema=False)
    def demo_page() -> str:
        return page

    @post("/dev/start-stream", include_in_schema=False)
    async def start_stream(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        try:
            body = await _read_json(request)
            org_id = _org_id(body)
            channel_id = _channel_id(body, required=False) or str(uuid.uuid4())
        except _BadRequest as error:
            return _error(400, str(error))

        token = keys.subscriber_token(org_id, channel_id, ttl_s=_SUBSCRIBER_TOKEN_TTL_S)
        base_url = str(request.base_url).rstrip("/")
        answer = {"token": token, "channel_id": channel_id, "url": f"{base_url}/events/{org_id}"}
        return Response({"conduit": answer}, status_code=200)

    @post("/dev/demo-stream", include_in_schema=False)
    async def demo_stream(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        try:
            body = await _read_json(request)
            org_id = _org_id(body)
            channel_id = _channel_id(body, required=True)
            text = _text(body)
        except _BadRequest as error:
            return _error(400, str(error))

        try:
            message_count = demos.start(org_id, channel_id, text)
        except TooManyDemoStreams as error:
            return _error(503, str(error))
        answer = {"org_id": org_id, "channel_id": channel_id, "messages": message_count}
        return Response(answer, status_code=202)

    return [demo_page, start_stream, demo_stream]


def _error(status: int, message: str) -> Response[dict[str, Any]]:
    return Response({"error": message}, status_code=status)


async def _read_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_BODY_BYTES:
        raise _BadRequest(f"request body is larger than {_MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    return body


def _org_id(body: dict[str, Any]) -> int:
    if "org_id" not in body:
        raise _BadRequest("org_id is required")
    value = body["org_id"]
    # bool is an int subclass, but true is no organization id.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ORG_ID:
        raise _BadRequest(f"org_id must be a non-negative 64-bit integer, got {json.dumps(value)[:64]}")
    return value


def _channel_id(body: dict[str, Any], *, required: bool) -> str | None:
    value = body.get("channel_id")
    if value is None:
        if required:
            raise _BadRequest("channel_id is required")
        return None
    if not isinstance(value, str):
        raise _BadRequest(f"channel_id must be a UUID string, got {json.dumps(value)[:64]}")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = None
    # Only the hyphenated form: the gateway and the token compare channel ids as text.
    if parsed is None or str(parsed) != value.lower():
        raise _BadRequest(
            f"channel_id must be a UUID such as 97f58c19-ce38-4c6b-8a5b-47f3405691f0, got {value[:64]!r}"
        )
    return str(parsed)


def _text(body: dict[str, Any]) -> str:
    value = body.get("text")
    if value is None:
        return DEFAULT_DEMO_TEXT
    if not isinstance(value, str) or not value.strip():
        raise _BadRequest("text must be a non-empty string")
    if len(value) > MAX_DEMO_TEXT_CHARS:
        raise _BadRequest(f"text must be at most {MAX_DEMO_TEXT_CHARS} characters, got {len(value)}")
    return value
