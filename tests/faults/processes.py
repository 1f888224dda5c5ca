"""``conduit serve`` and ``conduit dev`` as child processes, logging to a file, stopped by PID."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from tests.faults.helpers import (
    GATEWAY_AUDIENCE,
    ISSUER,
    PUBLISH_AUDIENCE,
    PUBLISH_SECRET,
    RATE_LIMIT,
)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
_LOG_POLL_INTERVAL_S = 0.05


def child_environment(redis_url: str | None, public_pem: str, **extra: str) -> dict[str, str]:
    """The environment of a child: this one without Conduit's variables, plus the test's settings."""
    prefixes = ("REDIS_", "PUBLISH_", "GATEWAY_", "CONDUIT_", "MAX_", "STREAM_", "CLEANUP_", "LOG_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}
    env.update(
        CONDUIT_HOST="127.0.0.1",
        PUBLISH_PORT="0",
        PUBLISH_GRPC_PORT="0",
        GATEWAY_PORT="0",
        PUBLISH_JWT_SECRET=PUBLISH_SECRET,
        PUBLISH_JWT_ISSUER=ISSUER,
        PUBLISH_JWT_AUDIENCE=PUBLISH_AUDIENCE,
        PUBLISH_RATE_LIMIT=str(RATE_LIMIT),
        GATEWAY_JWT_PUBLIC_KEY=public_pem,
        GATEWAY_JWT_ISSUER=ISSUER,
        GATEWAY_JWT_AUDIENCE=GATEWAY_AUDIENCE,
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


class ChildProcess:
    """One ``python -m conduit.cli ...`` child whose stderr goes to ``log_path``."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @classmethod
    async def start(cls, arguments: list[str], env: dict[str, str], log_path: Path) -> ChildProcess:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "conduit.cli", *arguments,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env,
            )
        return cls(process, log_path)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def wait_for_log(self, pattern: str) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fail when the child exits first or the start timeout passes."""
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                match = re.search(pattern, self.log, re.MULTILINE)
                if match:
                    return match
                if self.process.returncode is not None:
                    raise AssertionError(f"child exited with {self.process.returncode} before {pattern!r}:\n{self.log}")
                await asyncio.sleep(_LOG_POLL_INTERVAL_S)

    async def wait_for_port(self, name: str) -> int:
        """Return the port from the ``<name> listening host=... port=N`` line of the text log."""
        return int((await self.wait_for_log(rf"{name} listening host=\S+ port=(\d+)")).group(1))

    def send_signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    async def wait(self) -> int:
        """Wait for the child to exit, at most STOP_TIMEOUT_S, and return its exit status."""
        return await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)

    async def close(self) -> None:
        """Kill the child when it still runs; used only at teardown."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
