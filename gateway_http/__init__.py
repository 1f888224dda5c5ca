"""The SSE gateway: streams a channel's broker entries to browsers as Server-Sent Events.

``GatewayServer`` runs the whole service; ``create_app`` builds only the
Litestar app, for embedding. SSE responses read events through a ``Feed``;
``HubFeed`` shares one broker reader per process among all subscribers.
"""

from gateway_http.app import create_app
from gateway_http.drain import Drain
from gateway_http.feed import Feed, Subscription
from gateway_http.hub import HubFeed
from gateway_http.server import GatewayServer

__all__ = ["Drain", "Feed", "GatewayServer", "HubFeed", "Subscription", "create_app"]
