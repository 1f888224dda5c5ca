"""``conduit serve publish`` and ``conduit serve gateway`` as child processes on one Redis, for the drain test."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from tests.redis_process import free_port

__all__ = ["ServeProcess", "serve_environment"]

ISSUER = "browser-tests"
PUBLISH_AUDIENCE = "conduit-publish"
GATEWAY_AUDIENCE = "conduit-gateway"
PUBLISH_SECRET = "browser-test-publish-secret-0123456789"
_START_TIMEOUT_S = 20
_STOP_TIMEOUT_S = 20


def serve_environment(redis_url: str, public_pem: str) -> dict[str, str]:
    """The environment of a deployment: this test's Redis and keys, nothing from the developer's shell."""
    env = {
        name: value for name, value in os.environ.items()
        if not name.startswith(("REDIS_", "PUBLISH_", "GATEWAY_", "CONDUIT_"))
    }
    env.update({
        "REDIS_URL": redis_url,
        "CONDUIT_HOST": "127.0.0.1",
        "PUBLISH_JWT_SECRET": PUBLISH_SECRET,
        "PUBLISH_JWT_ISSUER": ISSUER,
        "PUBLISH_JWT_AUDIENCE": PUBLISH_AUDIENCE,
        "GATEWAY_JWT_PUBLIC_KEY": public_pem,
        "GATEWAY_JWT_ISSUER": ISSUER,
        "GATEWAY_JWT_AUDIENCE": GATEWAY_AUDIENCE,
    })
    return env


class ServeProcess:
    """One ``conduit serve ROLE`` child on free ports, ready once its /healthz returns 200."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path) -> None:
        self.role = role
        self.http_port = free_port()
        self.grpc_port = free_port() if role == "publish" else None
        self._env = dict(env)
        if role == "publish":
            self._env.update({"PUBLISH_PORT": str(self.http_port), "PUBLISH_GRPC_PORT": str(self.grpc_port)})
        else:
            self._env["GATEWAY_PORT"] = str(self.http_port)
        self._log_path = log_path
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "conduit.cli", "serve", self.role,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=self._env,
            )
        async with httpx.AsyncClient(timeout=1) as client, asyncio.timeout(_START_TIMEOUT_S):
            while True:
                if self._process.returncode is not None:
                    raise AssertionError(f"conduit serve {self.role} exited:\n{self._log_path.read_text()}")
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    async def stop(self) -> int:
        """Send SIGTERM (the gateway drains its streams) and return the exit status."""
        assert self._process is not None
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._process.wait(), _STOP_TIMEOUT_S)
        finally:
            if self._process.returncode is None:
                self._process.kill()
                await self._process.wait()
