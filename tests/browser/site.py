"""A test-only web site for the browser tests: the conduit-client page and an application's start-stream route.

It serves ``client.html``, the ``conduit-client`` module that ``scripts/install
--test`` put under ``tests/browser/node_modules``, and ``POST /start-stream``,
which answers the way a real application's backend does, with a token from
``conduit.tokens.mint_subscriber_token``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, get, post

from conduit.http_server import HttpServer
from conduit.tokens import mint_subscriber_token

__all__ = ["CLIENT_MODULE", "ClientSite", "TokenIssuer"]

HERE = Path(__file__).parent
CLIENT_MODULE = HERE / "node_modules" / "conduit-client" / "dist" / "index.mjs"


class TokenIssuer:
    """What an application's backend has: the gateway's address and the key that signs subscriber tokens."""

    def __init__(self, private_pem: str, *, issuer: str, audience: str, gateway_url: str) -> None:
        self.gateway_url = gateway_url
        self._private_pem = private_pem
        self._issuer = issuer
        self._audience = audience

    def answer(self, org_id: int, channel_id: str) -> dict[str, Any]:
        token = mint_subscriber_token(
            self._private_pem, issuer=self._issuer, audience=self._audience,
            org_id=org_id, channel_id=channel_id, ttl_s=600,
        )
        return {"conduit": {"token": token, "channel_id": channel_id, "url": f"{self.gateway_url}/events/{org_id}"}}


class ClientSite:
    """The site on a free loopback port; ``issuer`` may be set (and its gateway_url changed) between requests."""

    def __init__(self) -> None:
        self.issuer: TokenIssuer | None = None
        self._http = HttpServer(self._app(), "127.0.0.1", 0, name="browser-test-site", shutdown_timeout_s=1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.port}"

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    def _app(self) -> Litestar:
        site = self

        @get("/client.html", media_type="text/html", sync_to_thread=False)
        def client_page() -> str:
            return (HERE / "client.html").read_text(encoding="utf-8")

        @get("/conduit-client/index.mjs", media_type="text/javascript", sync_to_thread=False)
        def client_module() -> str:
            return CLIENT_MODULE.read_text(encoding="utf-8")

        @get("/react-stub.mjs", media_type="text/javascript", sync_to_thread=False)
        def react_stub() -> str:
            return (HERE / "react-stub.mjs").read_text(encoding="utf-8")

        @post("/start-stream")
        async def start_stream(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
            body = await request.json()
            if site.issuer is None:
                return Response({"error": "this site has no token issuer"}, status_code=503)
            channel_id = body.get("channel_id") or str(uuid.uuid4())
            return Response(site.issuer.answer(int(body["org_id"]), channel_id), status_code=200)

        return Litestar([client_page, client_module, react_stub, start_stream])
