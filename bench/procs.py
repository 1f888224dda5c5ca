"""Child processes of the benchmark: a private redis-server, nginx with Nchan, and Conduit's roles.

Every process here is started by the benchmark, listens on loopback only, and
is stopped by its own PID. Nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HOST",
    "ConduitServers",
    "NchanServer",
    "RedisServer",
    "Stats",
    "ensure_nchan_installed",
    "free_port",
    "process_stats",
    "stop_process",
]

HOST = "127.0.0.1"
_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 15.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = _START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with status {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout_s:g} s")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child by its PID: ``sig``, then SIGKILL after the stop timeout."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_TIMEOUT_S)


@dataclass(frozen=True)
class Stats:
    """CPU seconds (user + system) and resident bytes of a set of processes at one moment."""

    cpu_s: float
    rss_bytes: int


def process_stats(pids: list[int]) -> Stats:
    """Read the CPU time and the RSS (/proc/<pid>/statm) of ``pids``, summed.

    CPU time is the sum of /proc/<pid>/task/<tid>/schedstat over the
    process's threads, in nanoseconds. utime + stime from /proc/<pid>/stat
    count 10 ms clock ticks, too coarse for a scenario that costs the server
    a few tens of milliseconds; they are the fallback where schedstat is
    missing. Threads that exited between two readings drop out of the sum,
    and the servers measured here keep theirs.
    """
    cpu_s = 0.0
    rss_pages = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            cpu_s += _thread_cpu_s(pid)
            rss_pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return Stats(cpu_s=cpu_s, rss_bytes=rss_pages * _PAGE_BYTES)


def _thread_cpu_s(pid: int) -> float:
    """Return the CPU seconds of ``pid``'s live threads from schedstat, or from clock ticks without it."""
    total_ns = 0
    found = False
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total_ns += int((task / "schedstat").read_text().split()[0])
            found = True
    if found:
        return total_ns / 1e9
    # Fields after the command name, which may contain spaces, start after ')'.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    """Return the direct children of ``pid`` (the workers of a `serve --workers` parent)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(FileNotFoundError):
        return [int(part) for part in path.read_text().split()]
    return []


class RedisServer:
    """A private redis-server without persistence on a free loopback port."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://{HOST}:{port}"

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[RedisServer]:
        port = free_port()
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--maxclients", "20000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, process)
            yield cls(process, port)
        finally:
            stop_process(process)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(self.port), *args],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout

    def total_commands(self) -> int:
        for line in self.cli("INFO", "stats").splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":")[1])
        raise RuntimeError("INFO stats has no total_commands_processed")

    def connected_clients(self) -> int:
        return self.clients_field("connected_clients")

    def clients_field(self, name: str) -> int:
        """Return one integer field of INFO clients, such as connected_clients or blocked_clients."""
        for line in self.cli("INFO", "clients").splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split(":")[1])
        raise RuntimeError(f"INFO clients has no {name}")


def apt_install(packages: list[str], what: str) -> None:
    """Install Debian ``packages`` with apt-get (through sudo unless root); print why when it fails.

    ``what`` names what the runner skips without them, for the failure message.
    """
    command = ["apt-get", "install", "-y", "-q", *packages]
    if os.geteuid() != 0:
        command.insert(0, "sudo")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        print(f"apt-get failed ({result.returncode}); {what} skipped:\n{result.stderr[-2000:]}", file=sys.stderr)


def ensure_nchan_installed() -> bool:
    """Install Debian's nginx and Nchan module with apt-get when missing; return whether they are there."""
    if shutil.which("nginx") and NCHAN_MODULE.exists():
        return True
    apt_install(["nginx-light", "libnginx-mod-nchan"], "Nchan is")
    return bool(shutil.which("nginx")) and NCHAN_MODULE.exists()


_NGINX_CONFIG = """\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 40000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {redis_upstream}
    server {{
        listen {host}:{port} reuseport;
        location ~ ^/pub/(.+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
            nchan_message_buffer_length 1200;
            nchan_message_timeout 120s;
            {redis_use}
        }}
        location ~ ^/sub/(.+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
            {redis_use}
        }}
    }}
}}
"""


class NchanServer:
    """nginx with Nchan, one worker, a publisher at /pub/<channel> and an EventSource subscriber at /sub/<channel>."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    @classmethod
    @contextlib.contextmanager
    def start(cls, redis_url: str | None) -> Iterator[NchanServer]:
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="bench-nchan-") as raw_dir:
            directory = Path(raw_dir)
            upstream = use = ""
            if redis_url is not None:
                upstream = f"upstream redis_server {{ nchan_redis_server {redis_url}; }}"
                use = "nchan_redis_pass redis_server;"
            config = directory / "nginx.conf"
            config.write_text(
                _NGINX_CONFIG.format(
                    module=NCHAN_MODULE, dir=directory, host=HOST, port=port, redis_upstream=upstream, redis_use=use
                )
            )
            process = subprocess.Popen(
                ["nginx", "-p", str(directory), "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=(directory / "stderr.log").open("wb"),
            )
            try:
                wait_for_port(port, process)
                yield cls(process, port, directory)
            finally:
                # SIGQUIT is nginx's graceful stop; its worker exits with the master.
                stop_process(process, signal.SIGQUIT)

    def server_pids(self) -> list[int]:
        """Return the nginx worker's PID, since the worker does all the work and the master only supervises."""
        return child_pids(self.process.pid) or [self.process.pid]


class ConduitServers:
    """``conduit serve publish`` and ``conduit serve gateway`` as child processes on free loopback ports."""

    def __init__(self, publish: subprocess.Popen[bytes], gateway: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
        self.publish = publish
        self.gateway = gateway
        self.http_port = ports["PUBLISH_PORT"]
        self.grpc_port = ports["PUBLISH_GRPC_PORT"]
        self.gateway_port = ports["GATEWAY_PORT"]

    @classmethod
    @contextlib.contextmanager
    def start(cls, redis_url: str, env: dict[str, str], log_dir: Path, workers: int = 1) -> Iterator[ConduitServers]:
        ports = {"PUBLISH_PORT": free_port(), "PUBLISH_GRPC_PORT": free_port(), "GATEWAY_PORT": free_port()}
        child_env = {
            **os.environ,
            **env,
            **{name: str(port) for name, port in ports.items()},
            "REDIS_URL": redis_url,
            "CONDUIT_HOST": HOST,
            "PUBLISH_WORKERS": str(workers),
            "GATEWAY_WORKERS": str(workers),
        }
        command = [sys.executable, "-m", "conduit.cli", "serve"]
        started: list[subprocess.Popen[bytes]] = []
        try:
            for role in ("publish", "gateway"):
                log = (log_dir / f"{role}.log").open("wb")
                started.append(subprocess.Popen([*command, role], env=child_env, stdout=subprocess.DEVNULL, stderr=log))
            wait_for_port(ports["PUBLISH_PORT"], started[0])
            wait_for_port(ports["PUBLISH_GRPC_PORT"], started[0])
            wait_for_port(ports["GATEWAY_PORT"], started[1])
            yield cls(started[0], started[1], ports)
        finally:
            for process in started:
                stop_process(process)

    def pids(self, process: subprocess.Popen[bytes]) -> list[int]:
        """Return the serving processes: the workers when there are any, else the process itself."""
        return child_pids(process.pid) or [process.pid]
