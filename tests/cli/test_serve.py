"""``conduit serve``: one-line configuration errors, start-up, no dev routes, clean exit on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker import create_broker
from conduit.cli import main
from conduit.serve import check_broker_reachable
from conduit.settings import BrokerSettings
from conduit.tokens import generate_rsa_key_pair
from tests.cli.conftest import CONDUIT_VARIABLES
from tests.redis_process import free_port

_START_TIMEOUT_S = 20
_STOP_TIMEOUT_S = 20
_SECRET = "publish-secret-for-tests-0123456789abcdef"


_PUBLIC_PEM = generate_rsa_key_pair()[1]
_VALID_ENV = {
    "publish": {
        "REDIS_URL": "redis://127.0.0.1:1",
        "PUBLISH_JWT_SECRET": _SECRET,
        "PUBLISH_JWT_ISSUER": "backend",
        "PUBLISH_JWT_AUDIENCE": "conduit",
    },
    "gateway": {
        "REDIS_URL": "redis://127.0.0.1:1",
        "GATEWAY_JWT_PUBLIC_KEY": _PUBLIC_PEM,
        "GATEWAY_JWT_ISSUER": "backend",
        "GATEWAY_JWT_AUDIENCE": "browsers",
    },
    "cleanup": {"REDIS_URL": "redis://127.0.0.1:1"},
}


@pytest.mark.parametrize(
    ("role", "changes", "flags", "variable"),
    [
        ("publish", {"REDIS_URL": None}, [], "REDIS_URL"),
        ("gateway", {"REDIS_URL": None}, [], "REDIS_URL"),
        ("cleanup", {"REDIS_URL": None}, [], "REDIS_URL"),
        ("cleanup", {"REDIS_URL": "http://127.0.0.1:6379"}, [], "REDIS_URL"),
        ("cleanup", {"REDIS_CLUSTER": "maybe"}, [], "REDIS_CLUSTER"),
        ("publish", {"PUBLISH_JWT_SECRET": None}, [], "PUBLISH_JWT_SECRET"),
        ("publish", {"PUBLISH_JWT_ISSUER": " "}, [], "PUBLISH_JWT_ISSUER"),
        ("publish", {"PUBLISH_JWT_AUDIENCE": None}, [], "PUBLISH_JWT_AUDIENCE"),
        ("gateway", {"GATEWAY_JWT_PUBLIC_KEY": None}, [], "GATEWAY_JWT_PUBLIC_KEY"),
        ("gateway", {"GATEWAY_JWT_PUBLIC_KEY": "not a pem"}, [], "GATEWAY_JWT_PUBLIC_KEY"),
        ("gateway", {"GATEWAY_JWT_PUBLIC_KEY": "@/nonexistent/key.pem"}, [], "GATEWAY_JWT_PUBLIC_KEY"),
        ("gateway", {"GATEWAY_JWT_AUDIENCE": None}, [], "GATEWAY_JWT_AUDIENCE"),
        ("gateway", {"GATEWAY_PORT": "eighty"}, [], "GATEWAY_PORT"),
        ("gateway", {"LOG_FORMAT": "xml"}, [], "LOG_FORMAT"),
        ("publish", {"PUBLISH_PORT": "-1"}, [], "PUBLISH_PORT"),
        ("publish", {}, ["--publish-grpc-port", "70000"], "PUBLISH_GRPC_PORT"),
        ("publish", {"MAX_MESSAGE_BYTES": "0"}, [], "MAX_MESSAGE_BYTES"),
        ("publish", {"PUBLISH_RATE_LIMIT": "many"}, [], "PUBLISH_RATE_LIMIT"),
        ("cleanup", {}, ["--cleanup-interval-sec", "0"], "CLEANUP_INTERVAL_SEC"),
        ("cleanup", {"CLEANUP_STREAM_IDLE_SEC": "1.5"}, [], "CLEANUP_STREAM_IDLE_SEC"),
    ],
)
def test_serve_bad_setting_prints_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    role: str,
    changes: dict[str, str | None],
    flags: list[str],
    variable: str,
) -> None:
    for name, value in {**_VALID_ENV[role], **changes}.items():
        if value is not None:
            monkeypatch.setenv(name, value)

    status = main(["serve", role, *flags])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert re.match(rf"conduit serve: {variable}\b", captured.err), captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("url", "given"),
    [
        ("http://:hunter2-password@127.0.0.1:6379", "got the scheme http://"),
        ("127.0.0.1:6379", "got a value without a scheme"),
        ("redis://", "got redis:// with no address after it"),
        ("hunter2 password://127.0.0.1", "got a value without a scheme"),
    ],
)
def test_serve_bad_redis_url_names_scheme_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, given: str
) -> None:
    for name, value in _VALID_ENV["cleanup"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_URL", url)

    status = main(["serve", "cleanup"])

    err = capsys.readouterr().err
    assert status == 2
    assert err == f"conduit serve: REDIS_URL must be a redis://, rediss:// or unix:// URL, {given}\n"
    assert "hunter2" not in err


def test_serve_key_path_without_at_suggests_at(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in _VALID_ENV["gateway"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEWAY_JWT_PUBLIC_KEY", "/etc/conduit/subscriber.pub")

    status = main(["serve", "gateway"])

    assert status == 2
    assert capsys.readouterr().err == (
        "conduit serve: GATEWAY_JWT_PUBLIC_KEY is not a PEM-encoded public key; "
        "to read the key from a file, put @ before its path, as in @subscriber.pub\n"
    )


def test_serve_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in _VALID_ENV["publish"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PUBLISH_PORT", "8081")

    status = main(["serve", "publish", "--publish-port", "eighty"])

    assert status == 2
    assert capsys.readouterr().err == "conduit serve: PUBLISH_PORT must be an integer, got 'eighty'\n"


@pytest.mark.parametrize(
    ("role", "flag", "variable"),
    [
        ("publish", "--publish-dedup-window-sec", "PUBLISH_DEDUP_WINDOW_SEC"),
        ("gateway", "--gateway-max-connections-per-ip", "GATEWAY_MAX_CONNECTIONS_PER_IP"),
        ("gateway", "--gateway-max-connections-per-token", "GATEWAY_MAX_CONNECTIONS_PER_TOKEN"),
        ("gateway", "--max-stream-len", "MAX_STREAM_LEN"),
    ],
)
def test_serve_limit_flag_reaches_settings(
    role: str, flag: str, variable: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in _VALID_ENV[role].items():
        monkeypatch.setenv(name, value)

    status = main(["serve", role, flag, "-1"])

    assert status == 2
    assert capsys.readouterr().err.startswith(f"conduit serve: {variable} must be at least")


def test_serve_secret_never_echoed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2-password@127.0.0.1:1")

    status = main(["serve", "publish", "--publish-jwt-secret", _SECRET])

    err = capsys.readouterr().err
    assert status == 2
    assert "PUBLISH_JWT_ISSUER" in err
    assert _SECRET not in err
    assert "hunter2" not in err


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in CONDUIT_VARIABLES}
    return {**env, **extra}


def _conduit_command() -> list[str]:
    return [sys.executable, "-m", "conduit.cli"]


def test_serve_missing_variable_subprocess_one_line() -> None:
    result = subprocess.run(
        [*_conduit_command(), "serve", "gateway"],
        env=_child_env({}),
        capture_output=True,
        text=True,
        timeout=_START_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "conduit serve: REDIS_URL, GATEWAY_JWT_PUBLIC_KEY, GATEWAY_JWT_ISSUER and GATEWAY_JWT_AUDIENCE"
        " are required but not set\n"
    )


class _Running:
    """A `conduit serve` child process whose log goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self._log)

    def wait_for_log(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log_path.read_text())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.log_path.read_text()}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=_STOP_TIMEOUT_S)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=_STOP_TIMEOUT_S)
        self._log.close()


@pytest.fixture
def run_serve(tmp_path: Path) -> Iterator[type[_Running]]:
    started: list[_Running] = []

    class Tracked(_Running):
        def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
            super().__init__(args, env, log_path)
            started.append(self)

    yield Tracked
    for running in started:
        running.close()


def test_serve_gateway_has_no_dev_routes(redis_url: str, tmp_path: Path, run_serve: type[_Running]) -> None:
    env = _child_env({**_VALID_ENV["gateway"], "REDIS_URL": redis_url})
    gateway = run_serve([*_conduit_command(), "serve", "gateway", "--host", "127.0.0.1", "--gateway-port", "0"],
                        env, tmp_path / "gateway.log")

    port = int(gateway.wait_for_log(r"gateway listening host=127\.0\.0\.1 port=(\d+)").group(1))
    base_url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base_url, timeout=5) as client:
        ready = client.get("/readyz")
        page = client.get("/")
        start = client.post("/dev/start-stream", json={"org_id": 1})
        demo = client.post("/dev/demo-stream", json={"org_id": 1, "channel_id": "97f58c19-ce38-4c6b-8a5b-47f3405691f0"})

    assert ready.status_code == 200
    assert page.status_code == 404
    assert start.status_code == 404
    assert demo.status_code == 404
    assert gateway.terminate() == 0


def test_serve_publish_stops_on_sigterm(redis_url: str, tmp_path: Path, run_serve: type[_Running]) -> None:
    publish = run_serve(
        [*_conduit_command(), "serve", "publish", "--host", "127.0.0.1", "--publish-port", "0",
         "--publish-grpc-port", "0"],
        _child_env({**_VALID_ENV["publish"], "REDIS_URL": redis_url}),
        tmp_path / "publish.log",
    )

    port = int(publish.wait_for_log(r"publish listening host=127\.0\.0\.1 port=(\d+)").group(1))
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    status = publish.terminate()

    log = publish.log_path.read_text()
    assert health.status_code == 200
    assert status == 0
    assert "stop signal received" in log
    assert "publish server stopped" in log
    assert _SECRET not in log


def test_serve_cleanup_stops_on_sigint(redis_url: str, tmp_path: Path, run_serve: type[_Running]) -> None:
    cleanup = run_serve(
        [*_conduit_command(), "serve", "cleanup", "--log-format", "json"],
        _child_env({"REDIS_URL": redis_url}),
        tmp_path / "cleanup.log",
    )

    cleanup.wait_for_log(r'"message": "cleanup role started')
    cleanup.process.send_signal(signal.SIGINT)
    status = cleanup.process.wait(timeout=_STOP_TIMEOUT_S)

    assert status == 0
    assert '"message": "stopped"' in cleanup.log_path.read_text()


async def test_serve_unreachable_broker_logs_warning(caplog: pytest.LogCaptureFixture) -> None:

    broker = create_broker(BrokerSettings(redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0"))
    try:
        with caplog.at_level("WARNING", logger="conduit.serve"):
            reachable = await check_broker_reachable(broker)
    finally:
        await broker.close()

    assert reachable is False
    assert "broker not reachable at start-up; check REDIS_URL" in caplog.text
    assert "hunter2" not in caplog.text


async def test_serve_reachable_broker_logs_nothing(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:

    broker = create_broker(BrokerSettings(redis_url=redis_url))
    try:
        with caplog.at_level("WARNING", logger="conduit.serve"):
            reachable = await check_broker_reachable(broker)
    finally:
        await broker.close()

    assert reachable is True
    assert caplog.text == ""
