"""A private redis-server on a free loopback port, owned by the test session.

Tests that simulate an outage stop and restart it; its data lives in memory
only, so a restart starts empty unless ``stop(save=True)`` wrote a snapshot.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_START_TIMEOUT_S = 10


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """One redis-server child process bound to 127.0.0.1 on a free port."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server not found; run scripts/test, which installs it")
        self.executable = executable
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="conduit-redis-"))
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it responds to PING."""
        args = [
            self.executable,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--dbfilename", "dump.rdb",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, *, save: bool = False) -> None:
        """Stop the server; with ``save``, write a snapshot that the next start loads."""
        if self.process is None:
            return
        if save:
            # SHUTDOWN SAVE writes the snapshot and exits in one step, so a write
            # acknowledged between a separate SAVE and the signal cannot be lost.
            # Without retries, because the dropped connection is the expected reply.
            client = redis.Redis(
                host="127.0.0.1", port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)
            )
            try:
                client.shutdown(save=True)
            finally:
                client.close()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def client(self) -> redis.Redis:
        """Return a synchronous client for checks made from tests."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


_CLUSTER_SIZE = 3
_CLUSTER_CREATE_TIMEOUT_S = 30
_CLUSTER_NODE_TIMEOUT_MS = 5000


class RedisClusterProcess:
    """A three-master Redis Cluster of redis-server children on free loopback ports, no replicas."""

    def __init__(self) -> None:
        executable = shutil.which("redis-cli")
        if executable is None:
            raise RuntimeError("redis-cli not found; run scripts/test, which installs it")
        self.cli = executable
        self.nodes = [RedisProcess() for _ in range(_CLUSTER_SIZE)]
        for node in self.nodes:
            node.extra_args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.directory / f"nodes-{node.port}.conf"),
                "--cluster-node-timeout", str(_CLUSTER_NODE_TIMEOUT_MS),
                # The bus defaults to the client port + 10000, which may be taken
                # or above 65535 for an ephemeral client port.
                "--cluster-port", str(free_port()),
            ]

    @property
    def url(self) -> str:
        """URL of the first node; a cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        """Start the nodes, join them into one cluster and wait until every node reports cluster_state:ok."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        result = subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=_CLUSTER_CREATE_TIMEOUT_S, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
        self.wait_until_ok()

    def ensure_running(self) -> None:
        """Restart any node that a test stopped and wait until the cluster is ok again."""
        stopped = [node for node in self.nodes if node.process is None]
        for node in stopped:
            node.start()
        if stopped:
            self.wait_until_ok()

    def wait_until_ok(self) -> None:
        """Wait until every node reports cluster_state:ok; raise RuntimeError after a bounded time."""
        deadline = time.monotonic() + _CLUSTER_CREATE_TIMEOUT_S
        for node in self.nodes:
            client = node.client()
            try:
                while client.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"Redis Cluster node on port {node.port} did not reach cluster_state:ok "
                            f"within {_CLUSTER_CREATE_TIMEOUT_S} s"
                        )
                    time.sleep(0.05)
            finally:
                client.close()

    def flushall(self) -> None:
        """Empty every master."""
        for node in self.nodes:
            client = node.client()
            try:
                client.flushall()
            finally:
                client.close()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
