"""``conduit serve --workers N``: workers share the port, stop together on SIGTERM, and fail together."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conduit.cli import main
from conduit.sdk import build_request
from conduit.settings import load_settings
from conduit.tokens import generate_rsa_key_pair, mint_publisher_token
from conduit.v1alpha import publish_pb2
from conduit.workers import share_ports
from tests.cli.conftest import CONDUIT_VARIABLES

_START_TIMEOUT_S = 20
_STOP_TIMEOUT_S = 25
_SECRET = "publish-secret-for-worker-tests-0123456789"
_PUBLISH_ENV = {"PUBLISH_JWT_SECRET": _SECRET, "PUBLISH_JWT_ISSUER": "backend", "PUBLISH_JWT_AUDIENCE": "conduit"}
_GATEWAY_ENV = {
    "GATEWAY_JWT_PUBLIC_KEY": generate_rsa_key_pair()[1],
    "GATEWAY_JWT_ISSUER": "backend",
    "GATEWAY_JWT_AUDIENCE": "browsers",
}


class _Supervisor:
    """A `conduit serve --workers` parent process whose log goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        # A session of its own, so that a test can signal the whole process group as a terminal does.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conduit.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def wait_for_log(self, pattern: str, count: int) -> list[re.Match[str]]:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            matches = list(re.finditer(pattern, self.log_path.read_text()))
            if len(matches) >= count:
                return matches
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r} {count} times:\n{self.log_path.read_text()}")

    def worker_pids(self, count: int) -> list[int]:
        return [int(match.group(1)) for match in self.wait_for_log(r"worker started .*pid=(\d+)", count)]

    def close(self, worker_pids: list[int]) -> None:
        # Only processes this test started: the parent, then any worker it left behind.
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=_STOP_TIMEOUT_S)
        for pid in worker_pids:
            if _is_running(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[list[tuple[_Supervisor, list[int]]]]:
    started: list[tuple[_Supervisor, list[int]]] = []
    yield started
    for supervisor, pids in started:
        supervisor.close(pids)


def _start(
    supervisors: list[tuple[_Supervisor, list[int]]], args: list[str], env: dict[str, str], log_path: Path, count: int
) -> tuple[_Supervisor, list[int]]:
    supervisor = _Supervisor(args, env, log_path)
    pids: list[int] = []
    supervisors.append((supervisor, pids))
    pids.extend(supervisor.worker_pids(count))
    return supervisor, pids


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in CONDUIT_VARIABLES}
    env.pop("PUBLISH_WORKERS", None)
    env.pop("GATEWAY_WORKERS", None)
    return {**env, **extra}


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_is_running(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if _is_running(pid)]


def test_workers_publish_share_ports_and_stop_on_sigterm(
    redis_url: str, tmp_path: Path, supervisors: list[tuple[_Supervisor, list[int]]]
) -> None:
    supervisor, pids = _start(
        supervisors,
        ["serve", "publish", "--workers", "2", "--host", "127.0.0.1", "--publish-port", "0", "--publish-grpc-port", "0"],
        _child_env({**_PUBLISH_ENV, "REDIS_URL": redis_url}),
        tmp_path / "publish.log",
        2,
    )
    http_ports = {m.group(1) for m in supervisor.wait_for_log(r"publish listening host=127\.0\.0\.1 port=(\d+)", 2)}
    grpc_ports = {m.group(1) for m in supervisor.wait_for_log(r"publish gRPC listening host=\S+ port=(\d+)", 2)}
    supervisor.wait_for_log(r"started; waiting for SIGTERM", 2)

    (port,) = http_ports
    token = mint_publisher_token(_SECRET, issuer="backend", audience="conduit")
    channel_id = str(uuid.uuid4())
    body = build_request(org_id=1, channel_id=channel_id, phase=publish_pb2.PHASE_START, sequence=1).SerializeToString()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        # A new connection per request, so that the kernel may pick either worker.
        statuses = [
            client.get("/healthz", headers={"connection": "close"}).status_code for _ in range(6)
        ]
        published = client.post(
            f"/publish/1/{channel_id}", content=body, headers={"authorization": f"Bearer {token}"}
        )
    supervisor.process.send_signal(signal.SIGTERM)
    status = supervisor.process.wait(timeout=_STOP_TIMEOUT_S)

    log = supervisor.log_path.read_text()
    assert len(set(pids)) == 2
    assert len(grpc_ports) == 1
    assert statuses == [200] * 6
    assert published.status_code == 200, published.text
    assert re.fullmatch(r"\d+-\d+", published.text)
    assert status == 0, log
    assert _wait_gone(pids) == []
    assert log.count("publish server stopped") == 2
    assert "exit_statuses=[0, 0]" in log
    assert _SECRET not in log


def test_workers_gateway_from_variable_share_port(
    redis_url: str, tmp_path: Path, supervisors: list[tuple[_Supervisor, list[int]]]
) -> None:
    supervisor, pids = _start(
        supervisors,
        ["serve", "gateway", "--host", "127.0.0.1", "--gateway-port", "0"],
        _child_env({**_GATEWAY_ENV, "REDIS_URL": redis_url, "GATEWAY_WORKERS": "2"}),
        tmp_path / "gateway.log",
        2,
    )
    ports = {m.group(1) for m in supervisor.wait_for_log(r"gateway listening host=127\.0\.0\.1 port=(\d+)", 2)}
    supervisor.wait_for_log(r"started; waiting for SIGTERM", 2)

    (port,) = ports
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        statuses = [client.get("/readyz", headers={"connection": "close"}).status_code for _ in range(6)]
    supervisor.process.send_signal(signal.SIGTERM)
    status = supervisor.process.wait(timeout=_STOP_TIMEOUT_S)

    assert statuses == [200] * 6
    assert status == 0, supervisor.log_path.read_text()
    assert _wait_gone(pids) == []


def test_workers_ctrl_c_stops_without_warnings(
    redis_url: str, tmp_path: Path, supervisors: list[tuple[_Supervisor, list[int]]]
) -> None:
    supervisor, pids = _start(
        supervisors,
        ["serve", "gateway", "--workers", "2", "--host", "127.0.0.1", "--gateway-port", "0"],
        _child_env({**_GATEWAY_ENV, "REDIS_URL": redis_url}),
        tmp_path / "gateway.log",
        2,
    )
    supervisor.wait_for_log(r"started; waiting for SIGTERM", 2)

    # Ctrl-C in a terminal: SIGINT reaches the parent and every worker, and the parent adds SIGTERM.
    os.killpg(supervisor.process.pid, signal.SIGINT)
    status = supervisor.process.wait(timeout=_STOP_TIMEOUT_S)

    log = supervisor.log_path.read_text()
    assert status == 0, log
    assert _wait_gone(pids) == []
    assert "WARNING" not in log
    assert log.count("gateway stopped") == 2, log


def test_workers_one_killed_stops_all(
    redis_url: str, tmp_path: Path, supervisors: list[tuple[_Supervisor, list[int]]]
) -> None:
    supervisor, pids = _start(
        supervisors,
        ["serve", "gateway", "--workers", "2", "--host", "127.0.0.1", "--gateway-port", "0"],
        _child_env({**_GATEWAY_ENV, "REDIS_URL": redis_url}),
        tmp_path / "gateway.log",
        2,
    )
    supervisor.wait_for_log(r"started; waiting for SIGTERM", 2)

    os.kill(pids[0], signal.SIGKILL)
    status = supervisor.process.wait(timeout=_STOP_TIMEOUT_S)

    log = supervisor.log_path.read_text()
    assert status == 1, log
    assert "worker exited without a stop signal; stopping the others" in log
    assert f"pid={pids[0]} exit_status=-9" in log
    assert _wait_gone(pids) == []


@pytest.mark.parametrize(
    ("role", "flags", "variables", "message"),
    [
        ("publish", ["--workers", "0"], {}, "PUBLISH_WORKERS must be an integer from 1 to 256, got '0'"),
        ("gateway", [], {"GATEWAY_WORKERS": "many"}, "GATEWAY_WORKERS must be an integer from 1 to 256, got 'many'"),
        ("gateway", ["--workers", "257"], {"GATEWAY_WORKERS": "2"}, "GATEWAY_WORKERS must be an integer from 1 to 256, got '257'"),
    ],
)
def test_workers_bad_count_prints_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    role: str,
    flags: list[str],
    variables: dict[str, str],
    message: str,
) -> None:
    env = {**(_PUBLISH_ENV if role == "publish" else _GATEWAY_ENV), "REDIS_URL": "redis://127.0.0.1:1", **variables}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    status = main(["serve", role, *flags])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == f"conduit serve: {message}\n"


def test_workers_cleanup_has_no_workers_flag(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "cleanup", "--workers", "2"])

    assert status == 2
    assert "unrecognized arguments: --workers 2" in capsys.readouterr().err


@pytest.mark.parametrize(("role", "field", "setting"), [
    ("gateway", "gateway_port", "GATEWAY_PORT or --gateway-port"),
    ("publish", "publish_grpc_port", "PUBLISH_GRPC_PORT or --publish-grpc-port"),
])
def test_workers_port_of_other_workers_rejected(role: str, field: str, setting: str) -> None:
    # This socket plays another `serve --workers` that listens with
    # SO_REUSEPORT. Without the check, the new workers would share its port.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        settings = dataclasses.replace(
            load_settings("dev", environ={}), host="127.0.0.1", publish_port=0, **{field: port}
        )

        with pytest.raises(OSError) as raised:
            share_ports(role, settings)

    message = str(raised.value)
    assert message.startswith(f"{role}: cannot bind 127.0.0.1:{port}: ")
    assert message.endswith(f"; choose another port with {setting}")


def test_workers_free_fixed_port_accepted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = dataclasses.replace(load_settings("dev", environ={}), host="127.0.0.1", gateway_port=port)

    shared, held_sockets = share_ports("gateway", settings)

    assert shared.gateway_port == port
    assert held_sockets == []


def test_workers_same_publish_ports_rejected() -> None:
    # Both listeners set SO_REUSEPORT under --workers, so without the check
    # both would bind and every gRPC call would reach the HTTP listener.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = dataclasses.replace(
        load_settings("dev", environ={}), host="127.0.0.1", publish_port=port, publish_grpc_port=port
    )

    with pytest.raises(OSError) as raised:
        share_ports("publish", settings)

    assert str(raised.value) == (
        f"publish: 2 listeners are set to port {port}: choose different ports with"
        " PUBLISH_PORT or --publish-port and PUBLISH_GRPC_PORT or --publish-grpc-port"
    )
