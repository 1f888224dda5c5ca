"""``conduit dev`` start-up on a Redis that does not respond."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from conduit.dev import dev_settings, run_dev
from conduit.dev_keys import DevKeys
from tests.cli.conftest import LOOPBACK_PORTS_0
from tests.redis_process import free_port

_TIMEOUT_S = 20


async def test_dev_unreachable_redis_logs_warning(
    dev_keys: DevKeys, state_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.WARNING, logger="conduit.serve")
    settings = dev_settings(dev_keys, {**LOOPBACK_PORTS_0, "REDIS_URL": f"redis://127.0.0.1:{free_port()}"}, environ={})
    stopping = asyncio.Event()
    stopping.set()

    await asyncio.wait_for(run_dev(settings, dev_keys, state_dir, stopping), _TIMEOUT_S)

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(message.startswith("broker not reachable at start-up") for message in warnings), warnings
    assert "Conduit dev is running" in capsys.readouterr().out
