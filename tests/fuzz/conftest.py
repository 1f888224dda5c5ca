"""Fixtures for the fuzz tests: one publish service and one gateway per module, and a case counter.

The servers run on their own event loop in a background thread, so that the
hypothesis tests can be plain synchronous functions that call them with
blocking httpx and gRPC clients. Every test checks the same promises after
each generated case through ``Stack``: a clear 4xx or gRPC error (or success
for valid input), no ERROR log line or traceback, and no entry in a stream.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import grpc
import httpx
import pytest
import redis
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from broker import create_broker
from conduit.settings import BrokerSettings, JwtSettings, Settings
from conduit.tokens import generate_rsa_key_pair
from gateway_http.server import GatewayServer
from publish_grpc.server import PublishServer
from tests.fuzz import cases
from tests.redis_process import RedisProcess

_START_TIMEOUT_S = 30
_STOP_TIMEOUT_S = 30


class _ProblemLog(logging.Handler):
    """Keep every record at ERROR or above, and every record that carries a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info is not None:
            self.records.append(record)


class Stack:
    """A PublishServer and a GatewayServer on one Redis, served from a background event loop."""

    def __init__(self, redis_process: RedisProcess, public_pem: str, private_pem: str) -> None:
        self.private_pem = private_pem
        # Loading an RSA private key checks it, which costs far more than signing; do it once.
        self.private_key = load_pem_private_key(private_pem.encode(), password=None)
        self.public_pem = public_pem
        self.redis = redis_process.client()
        self.settings = Settings(
            host="127.0.0.1",
            publish_port=0,
            publish_grpc_port=0,
            gateway_port=0,
            max_message_bytes=cases.MAX_MESSAGE_BYTES,
            # Valid cases each use a fresh channel, so the limit only needs to stay out of the way.
            broker=BrokerSettings(redis_url=redis_process.url, rate_limit=1_000_000, stream_ttl_s=60),
            publish_jwt=JwtSettings(key=cases.PUBLISH_SECRET, issuer=cases.ISSUER, audience=cases.PUBLISH_AUDIENCE),
            gateway_jwt=JwtSettings(key=public_pem, issuer=cases.ISSUER, audience=cases.GATEWAY_AUDIENCE),
        )
        self.problems = _ProblemLog()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-servers", daemon=True)
        self.broker = create_broker(self.settings.broker)
        self.publish = PublishServer(self.settings, self.broker, body_read_timeout_s=cases.BODY_READ_TIMEOUT_S)
        self.gateway = GatewayServer(self.settings, self.broker, keepalive_interval_s=1)
        # Without TCP_NODELAY each request would wait out a delayed ACK between its headers and body.
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.http = httpx.Client(timeout=cases.CLIENT_TIMEOUT_S, transport=transport)
        self._grpc_channel: grpc.Channel | None = None

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def start(self) -> None:
        logging.getLogger().addHandler(self.problems)
        self._thread.start()
        self.run(self.publish.start(), _START_TIMEOUT_S)
        self.run(self.gateway.start(), _START_TIMEOUT_S)
        self._grpc_channel = grpc.insecure_channel(self.grpc_target)

    def stop(self) -> None:
        try:
            self.http.close()
            if self._grpc_channel is not None:
                self._grpc_channel.close()
            self.run(self.gateway.stop(grace_s=2), _STOP_TIMEOUT_S)
            self.run(self.publish.stop(grace_s=2), _STOP_TIMEOUT_S)
            self.run(self.broker.close(), _STOP_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_STOP_TIMEOUT_S)
            self._loop.close()
            self.redis.close()
            logging.getLogger().removeHandler(self.problems)

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.publish.http_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.publish.grpc_port}"

    @property
    def grpc_channel(self) -> grpc.Channel:
        assert self._grpc_channel is not None
        return self._grpc_channel

    def stream_entry_count(self) -> int:
        """Return the number of entries across every stream in Redis."""
        return sum(int(self.redis.xlen(key)) for key in self.redis.scan_iter(match="stream:*", count=1000))

    def assert_no_problem_logged(self) -> None:
        """Fail with the first ERROR line or traceback that the servers logged, then forget them."""
        records, self.problems.records = self.problems.records, []
        if records:
            first = records[0]
            formatted = logging.Formatter().format(first)
            raise AssertionError(f"{len(records)} problem log line(s), the first from {first.name}:\n{formatted}")


@pytest.fixture(scope="session")
def fuzz_rsa_keys() -> tuple[str, str]:
    return generate_rsa_key_pair()


@pytest.fixture(scope="module")
def stack(redis_process: RedisProcess, fuzz_rsa_keys: tuple[str, str]) -> Iterator[Stack]:
    """Both services on the session's Redis, emptied first; one per test module."""
    if redis_process.process is None:
        redis_process.start()
    client: redis.Redis = redis_process.client()
    try:
        client.flushall()
    finally:
        client.close()

    private_pem, public_pem = fuzz_rsa_keys
    running = Stack(redis_process, public_pem, private_pem)
    running.start()
    yield running
    running.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if cases.CASES_RUN:
        terminalreporter.write_line(f"fuzz cases run: {cases.CASES_RUN}")
