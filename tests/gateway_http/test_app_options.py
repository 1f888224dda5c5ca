"""create_app / GatewayServer options: extra route handlers and their CORS."""

from __future__ import annotations

import httpx
import pytest
from litestar import post
from litestar.params import JSONBody

from tests.gateway_http.helpers import GatewayFactory

pytestmark = pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)

ORIGIN = "http://localhost:5173"


@post("/dev/echo", sync_to_thread=False)
def echo(data: JSONBody[dict[str, object]]) -> dict[str, object]:
    return data


async def test_extra_route_with_all_methods_cors_allows_post(start_gateway: GatewayFactory) -> None:
    server = await start_gateway(extra_route_handlers=[echo], cors_allow_all_methods=True)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        preflight = await http.options(
            "/dev/echo",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        response = await http.post("/dev/echo", json={"org_id": 1}, headers={"Origin": ORIGIN})

    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert response.status_code == 201
    assert response.json() == {"org_id": 1}
    assert response.headers["access-control-allow-origin"] == "*"


async def test_default_cors_rejects_post_preflight(start_gateway: GatewayFactory) -> None:
    server = await start_gateway(extra_route_handlers=[echo])

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        preflight = await http.options(
            "/dev/echo", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )

    assert preflight.status_code == 400
    assert "access-control-allow-methods" not in preflight.headers
