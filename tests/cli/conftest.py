"""Fixtures for the command-line tests: a state folder with dev keys, a clean environment, a dev stack."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conduit.dev import DevStack, dev_settings
from conduit.dev_keys import DevKeys, dev_keys_path, load_dev_keys, load_or_create_dev_keys

# Every variable that the settings or the token commands read.
CONDUIT_VARIABLES = (
    "REDIS_URL",
    "REDIS_CLUSTER",
    "CONDUIT_HOST",
    "PUBLISH_PORT",
    "PUBLISH_GRPC_PORT",
    "GATEWAY_PORT",
    "PUBLISH_JWT_SECRET",
    "PUBLISH_JWT_ISSUER",
    "PUBLISH_JWT_AUDIENCE",
    "GATEWAY_JWT_PUBLIC_KEY",
    "GATEWAY_JWT_PRIVATE_KEY",
    "GATEWAY_JWT_ISSUER",
    "GATEWAY_JWT_AUDIENCE",
    "MAX_MESSAGE_BYTES",
    "MAX_STREAM_LEN",
    "PUBLISH_RATE_LIMIT",
    "PUBLISH_RATE_WINDOW_SEC",
    "STREAM_TTL_SEC",
    "CLEANUP_INTERVAL_SEC",
    "CLEANUP_STREAM_IDLE_SEC",
    "LOG_FORMAT",
)

LOOPBACK_PORTS_0 = {
    "CONDUIT_HOST": "127.0.0.1",
    "PUBLISH_PORT": "0",
    "PUBLISH_GRPC_PORT": "0",
    "GATEWAY_PORT": "0",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove Conduit's variables, so that the developer's shell cannot change a test's outcome."""
    for name in CONDUIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="session")
def dev_keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dev keys file for the session, since generating an RSA key takes a noticeable time."""
    state_dir = tmp_path_factory.mktemp("dev-keys")
    load_or_create_dev_keys(state_dir)
    return dev_keys_path(state_dir)


@pytest.fixture
def dev_keys(state_dir: Path, dev_keys_file: Path) -> DevKeys:
    """The session's dev keys, copied into this test's state folder."""
    state_dir.mkdir(mode=0o700)
    shutil.copy(dev_keys_file, dev_keys_path(state_dir))
    return load_dev_keys(state_dir)


@pytest.fixture
def channel_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def dev_stack(dev_keys: DevKeys) -> AsyncIterator[DevStack]:
    """``conduit dev`` in this test's event loop: embedded broker, free loopback ports."""
    stack = DevStack(dev_settings(dev_keys, LOOPBACK_PORTS_0, environ={}), dev_keys)
    await stack.start()
    yield stack
    await stack.stop()
