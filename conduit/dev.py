"""``conduit dev``: the publish service, the gateway and cleanup in one process and one event loop.

The stack runs on the embedded broker unless REDIS_URL is set, signs and
checks tokens with the dev keys from the state folder (see ``conduit.dev_keys``)
and adds the dev-only routes of ``conduit.dev_routes`` to the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker import create_broker
from broker.base import Broker
from conduit.dev_demo import DemoStreams
from conduit.dev_keys import DEFAULT_STATE_DIR, DevKeys, dev_keys_path
from conduit.dev_routes import dev_route_handlers
from conduit.serve import SHUTDOWN_GRACE_S, check_broker_reachable, create_server
from conduit.settings import JwtSettings, Settings, load_settings

__all__ = ["DEMO_ORG_ID", "DevStack", "dev_settings", "format_banner", "run_dev"]

logger = logging.getLogger(__name__)

DEMO_ORG_ID = 1
_PRINTED_TOKEN_TTL_S = 24 * 3600
_CLEANUP_STOP_TIMEOUT_S = 10.0
_DEFAULT_PORTS = {"publish": 8081, "gateway": 8080}


def dev_settings(keys: DevKeys, overrides: Mapping[str, str | None], environ: Mapping[str, str] | None = None) -> Settings:
    """Load the dev role's settings, with the dev keys in place of any configured JWT keys.

    The PUBLISH_JWT_* and GATEWAY_JWT_* variables are ignored, because the
    tokens that dev mode prints and issues are signed with the dev keys.
    """
    source = os.environ if environ is None else environ
    without_jwt = {
        name: value for name, value in source.items() if not name.startswith(("PUBLISH_JWT_", "GATEWAY_JWT_"))
    }
    settings = load_settings("dev", environ=without_jwt, overrides=overrides)
    return dataclasses.replace(
        settings,
        publish_jwt=JwtSettings(key=keys.publish_secret, issuer=keys.issuer, audience=keys.publish_audience),
        gateway_jwt=JwtSettings(key=keys.subscriber_public_key, issuer=keys.issuer, audience=keys.gateway_audience),
    )


class DevStack:
    """The three roles on one broker; ``start()`` then ``stop()``, each once."""

    def __init__(self, settings: Settings, keys: DevKeys) -> None:
        self.settings = settings
        self.keys = keys
        self.broker: Broker = create_broker(settings.broker)
        self.demos = DemoStreams(self.broker)
        self._publish: Any = None
        self._gateway: Any = None
        self._cleanup_stopping = asyncio.Event()
        self._cleanup_task: asyncio.Task[None] | None = None

    @property
    def url_host(self) -> str:
        """Host for URLs that a local client can connect to: loopback when bound to every address."""
        host = self.settings.host
        if host in ("0.0.0.0", "", "::"):
            return "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    @property
    def publish_port(self) -> int:
        """Bound port of the HTTP shim; valid after ``start()``."""
        return int(self._publish.http_port)

    @property
    def grpc_port(self) -> int:
        """Bound port of the gRPC service; valid after ``start()``."""
        return int(self._publish.grpc_port)

    @property
    def gateway_port(self) -> int:
        """Bound port of the gateway; valid after ``start()``."""
        return int(self._gateway.port)

    @property
    def publish_url(self) -> str:
        return f"http://{self.url_host}:{self.publish_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.url_host}:{self.grpc_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.url_host}:{self.gateway_port}"

    async def start(self) -> None:
        """Start publish, gateway and cleanup; on failure, stop whatever did start and re-raise."""
        from broker.cleanup import run_cleanup

        try:
            self._publish = create_server("publish", self.settings, self.broker)
            await self._publish.start()
            self._gateway = create_server(
                "gateway",
                self.settings,
                self.broker,
                extra_route_handlers=dev_route_handlers(self.keys, self.demos),
            )
            await self._gateway.start()
            self._cleanup_task = asyncio.create_task(
                run_cleanup(self.broker, self.settings.cleanup, self._cleanup_stopping), name="conduit-dev-cleanup"
            )
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "dev mode started",
            extra={
                "broker": "redis" if self.settings.broker.redis_url else "embedded",
                "publish_port": self.publish_port,
                "grpc_port": self.grpc_port,
                "gateway_port": self.gateway_port,
            },
        )

    async def stop(self) -> None:
        """Drain the gateway, stop demo streams, publish and cleanup, then close the broker."""
        try:
            if self._gateway is not None:
                await self._gateway.stop(grace_s=SHUTDOWN_GRACE_S)
            await self.demos.stop()
            if self._publish is not None:
                await self._publish.stop(grace_s=SHUTDOWN_GRACE_S)
            await self._stop_cleanup()
        finally:
            await self.broker.close()
        logger.info("dev mode stopped")

    async def _stop_cleanup(self) -> None:
        if self._cleanup_task is None:
            return
        self._cleanup_stopping.set()
        try:
            await asyncio.wait_for(self._cleanup_task, _CLEANUP_STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("cleanup did not stop in time; cancelled it", extra={"timeout_s": _CLEANUP_STOP_TIMEOUT_S})
        except Exception:
            logger.exception("cleanup failed")
        finally:
            if not self._cleanup_task.done():
                self._cleanup_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._cleanup_task


async def run_dev(settings: Settings, keys: DevKeys, state_dir: Path, stopping: asyncio.Event) -> None:
    """Start the dev stack, print the start-up text to stdout, and stop the stack once ``stopping`` is set."""
    stack = DevStack(settings, keys)
    if settings.broker.redis_url:
        await check_broker_reachable(stack.broker)
    await stack.start()
    try:
        sys.stdout.write(format_banner(stack, state_dir))
        sys.stdout.flush()
        await stopping.wait()
    finally:
        await stack.stop()


def format_banner(stack: DevStack, state_dir: Path, *, channel_id: str | None = None) -> str:
    """Return the start-up text: ports, example tokens and commands to try them.

    Each ``name: value`` line starts with two spaces and a fixed name, so tests
    and scripts can read the values back.
    """
    channel_id = channel_id or str(uuid.uuid4())
    publisher_token = stack.keys.publisher_token(ttl_s=_PRINTED_TOKEN_TTL_S)
    subscriber_token = stack.keys.subscriber_token(DEMO_ORG_ID, channel_id, ttl_s=_PRINTED_TOKEN_TTL_S)
    broker = "Redis at REDIS_URL" if stack.settings.broker.redis_url else "embedded in-memory broker"

    flags = _client_flags(stack, state_dir)
    conduit = _conduit_command()
    ids = f"--org-id {DEMO_ORG_ID} --channel-id {channel_id}"
    tail_flags = " ".join(filter(None, [ids, flags["gateway"], flags["state"]]))
    send_flags = " ".join(filter(None, [ids, flags["publish"], flags["state"]]))
    events_url = f"{stack.gateway_url}/events/{DEMO_ORG_ID}?channel_id={channel_id}&token={subscriber_token}"

    lines = [
        f"Conduit dev is running ({broker}). Stop it with Ctrl-C.",
        "",
        f"  publish HTTP: {stack.publish_url}/publish/{{org_id}}/{{channel_id}}",
        f"  publish gRPC: {stack.grpc_target}",
        f"  gateway: {stack.gateway_url}/events/{{org_id}}",
        f"  demo page: {stack.gateway_url}/",
        f"  dev keys: {dev_keys_path(state_dir)}",
        "",
        f"  org_id: {DEMO_ORG_ID}",
        f"  channel_id: {channel_id}",
        f"  publisher token: {publisher_token}",
        f"  subscriber token: {subscriber_token}",
        "",
        "Try it, each in its own terminal:",
        f"  {conduit} tail {tail_flags}",
        f"  {conduit} send {send_flags} --demo",
        f"  curl -N '{events_url}'",
        "",
    ]
    return "\n".join(lines)


def _conduit_command() -> str:
    """Return how to call this same ``conduit`` from the current folder.

    ``conduit`` alone when the shell finds this executable on PATH, else its
    path (such as ``.venv/bin/conduit``), so the printed commands work as pasted.
    """
    executable = Path(sys.argv[0])
    if executable.name != "conduit":
        return "conduit"
    on_path = shutil.which("conduit")
    if on_path is not None and Path(on_path).resolve() == executable.resolve():
        return "conduit"
    relative = os.path.relpath(executable)
    return str(executable.resolve()) if relative.startswith("..") else relative


def _client_flags(stack: DevStack, state_dir: Path) -> dict[str, str]:
    """Return the flags `conduit send` and `conduit tail` need beyond their defaults to reach this stack."""
    flags = {"publish": "", "gateway": "", "state": ""}
    if stack.url_host != "127.0.0.1" or stack.publish_port != _DEFAULT_PORTS["publish"]:
        flags["publish"] = f"--url {stack.publish_url}"
    if stack.url_host != "127.0.0.1" or stack.gateway_port != _DEFAULT_PORTS["gateway"]:
        flags["gateway"] = f"--url {stack.gateway_url}"
    if state_dir != DEFAULT_STATE_DIR:
        flags["state"] = f"--state-dir {state_dir}"
    return flags
