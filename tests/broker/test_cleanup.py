"""run_cleanup: periodic sweeps, their logs, and a prompt stop."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest

from broker.cleanup import run_cleanup
from broker.factory import create_broker
from broker.keys import stream_key
from conduit.settings import BrokerSettings, CleanupSettings
from tests.broker.conftest import Backend
from tests.redis_process import free_port

# Only a guard against hangs.
WAIT_TIMEOUT_S = 10.0


async def wait_for_records(
    caplog: pytest.LogCaptureFixture, message: str, count: int
) -> list[logging.LogRecord]:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while True:
        records = [record for record in caplog.records if record.getMessage() == message]
        if len(records) >= count:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} {message!r} records after {WAIT_TIMEOUT_S} s")
        await asyncio.sleep(0.01)


async def test_run_cleanup_stops_when_stopping_set(backend: Backend) -> None:
    broker = backend.make()
    stopping = asyncio.Event()
    # An hour-long interval: the task can only end this soon if the stop cuts the wait short.
    task = asyncio.create_task(run_cleanup(broker, CleanupSettings(interval_s=3600), stopping))
    await asyncio.sleep(0)

    stopping.set()

    await asyncio.wait_for(task, WAIT_TIMEOUT_S)
    assert task.done()


async def test_run_cleanup_returns_when_already_stopping(backend: Backend) -> None:
    broker = backend.make()
    stopping = asyncio.Event()
    stopping.set()
    stream = stream_key(1, str(uuid.uuid4()))
    await broker.append(stream, b"open", end=False)

    await asyncio.wait_for(
        run_cleanup(broker, CleanupSettings(interval_s=3600, stream_idle_s=0), stopping),
        WAIT_TIMEOUT_S,
    )

    assert await broker.info(stream) is not None


async def test_run_cleanup_logs_deleted_stream(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.cleanup")
    broker = backend.make()
    channel_id = str(uuid.uuid4())
    stream = stream_key(7, channel_id)
    await broker.append(stream, b"left open", end=False)
    # The newest entry must be strictly older than the sweep's cutoff.
    await asyncio.sleep(0.2)
    stopping = asyncio.Event()
    settings = CleanupSettings(interval_s=3600, stream_idle_s=0.1)

    task = asyncio.create_task(run_cleanup(broker, settings, stopping))
    try:
        [record] = await wait_for_records(caplog, "deleted idle stream", 1)
    finally:
        stopping.set()
        await asyncio.wait_for(task, WAIT_TIMEOUT_S)

    assert record.levelno == logging.INFO
    assert record.org_id == 7  # type: ignore[attr-defined]
    assert record.channel_id == channel_id  # type: ignore[attr-defined]
    assert await broker.info(stream) is None


async def test_run_cleanup_survives_broker_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="broker.cleanup")
    broker = create_broker(BrokerSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    stopping = asyncio.Event()
    settings = CleanupSettings(interval_s=0.05, stream_idle_s=60)

    task = asyncio.create_task(run_cleanup(broker, settings, stopping))
    try:
        records = await wait_for_records(caplog, "cleanup sweep failed; retrying at the next interval", 2)
    finally:
        stopping.set()
        await asyncio.wait_for(task, WAIT_TIMEOUT_S)
        await broker.close()

    assert all(record.levelno == logging.WARNING for record in records)
    assert records[0].error == "Redis cleanup failed (ConnectionError)"  # type: ignore[attr-defined]


def test_cleanup_module_forwards_arguments() -> None:
    # Run without REDIS_URL: "--help" only succeeds when the flags reach the parser,
    # since "serve cleanup" alone would stop on the missing variable.
    env = {name: value for name, value in os.environ.items() if not name.startswith("REDIS_")}

    result = subprocess.run(
        [sys.executable, "-m", "broker.cleanup", "--help"],
        capture_output=True, text=True, env=env, timeout=WAIT_TIMEOUT_S, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "usage: conduit serve cleanup" in result.stdout
    assert "--cleanup-interval-sec" in result.stdout
