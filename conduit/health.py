"""``/healthz``, ``/readyz`` and ``/metrics`` route handlers for both HTTP services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from broker.base import Broker
from conduit.errors import BrokerUnavailable

__all__ = ["READINESS_TIMEOUT_S", "health_handlers"]

READINESS_TIMEOUT_S = 1.0

# Litestar 2.25 appends "; charset=utf-8" to every text/* media type, and
# CONTENT_TYPE_LATEST ends with that parameter already. Prometheus 3 fails the
# scrape of a Content-Type that names a parameter twice.
_METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


def health_handlers(broker: Broker, *, is_draining: Callable[[], bool] = lambda: False) -> list[HTTPRouteHandler]:
    """Build the three handlers; ``/readyz`` also reports 503 while ``is_draining()`` is true."""
    started_at = time.monotonic()

    @get("/healthz", media_type="application/json", sync_to_thread=False, include_in_schema=False)
    def healthz() -> dict[str, object]:
        return {"status": "ok", "uptime_s": round(time.monotonic() - started_at, 3)}

    @get("/readyz", media_type="application/json", include_in_schema=False)
    async def readyz() -> Response[dict[str, str]]:
        if is_draining():
            return Response({"status": "draining"}, status_code=503)
        try:
            await asyncio.wait_for(broker.ping(), READINESS_TIMEOUT_S)
        except (BrokerUnavailable, TimeoutError):
            return Response({"status": "broker unavailable"}, status_code=503)
        return Response({"status": "ready"}, status_code=200)

    @get("/metrics", sync_to_thread=False, include_in_schema=False)
    def metrics() -> Response[bytes]:
        return Response(generate_latest(REGISTRY), media_type=_METRICS_MEDIA_TYPE)

    return [healthz, readyz, metrics]
