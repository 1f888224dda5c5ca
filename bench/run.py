"""Benchmark Conduit against Nchan (in memory and on Redis) in one run, with Redis's own rate as the ceiling.

Run from the repository root::

    .venv/bin/python -m bench.run --quick          # small counts, about two minutes
    .venv/bin/python -m bench.run --out bench.json # the full run, about 15 minutes

It starts everything it measures as child processes on loopback ports: one
private redis-server, ``conduit serve publish`` and ``conduit serve gateway``,
and nginx with Nchan (one worker) with and without Nchan's Redis backend.
nginx and its Nchan module, and h2load (nghttp2-client) for the publish rows
that use a C client, are installed with apt-get when missing. All targets
stay up for the whole run. The idle scenario runs first, on one target after
the other. Then every other scenario runs repeat 1 on each target, then
repeat 2, and so on.
The order of the targets rotates per repeat, so a change in the machine's
load falls on all of them alike. Results are medians of the repeats with
their min and max; ratios compare Conduit with Nchan from the same run. The
Markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import h2load, loadgen
from bench.loadgen import SubscriberGroup, Target
from bench.procs import HOST, ConduitServers, NchanServer, RedisServer, ensure_nchan_installed, process_stats
from bench.report import report

_SECRET = "bench-publisher-secret-0123456789abcdef"


@dataclass(frozen=True)
class Sizes:
    publish_s: float
    publish_repeats: int
    publish_connections: int
    load_processes: int
    grpc_streams: int
    fanout_counts: tuple[int, ...]
    fanout_repeats: int
    messages: int
    interval_s: float
    many_channels: int
    many_rounds: int
    many_repeats: int
    idle_counts: tuple[int, ...]
    idle_channels: int
    idle_window_s: float
    redis_benchmark_requests: int


QUICK = Sizes(2, 2, 8, 2, 8, (20, 100), 2, 5, 0.1, 50, 3, 2, (50, 200), 10, 2, 20000)
FULL = Sizes(5, 3, 16, 2, 16, (100, 1000, 5000), 5, 20, 0.1, 1000, 5, 3, (1000, 5000), 100, 5, 200000)


# --- Helpers ----------------------------------------------------------------


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def summary(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


@contextmanager
def cpu_meter(pids: list[int], redis_pid: int) -> Iterator[dict[str, float]]:
    """Measure CPU seconds of ``pids`` and of Redis across the block."""
    result: dict[str, float] = {}
    before, redis_before, wall = process_stats(pids), process_stats([redis_pid]), time.perf_counter()
    yield result
    after, redis_after = process_stats(pids), process_stats([redis_pid])
    result.update(
        cpu_s=after.cpu_s - before.cpu_s,
        redis_cpu_s=redis_after.cpu_s - redis_before.cpu_s,
        wall_s=time.perf_counter() - wall,
    )


# --- Scenarios --------------------------------------------------------------


# The publishes of one repeat that succeeded and failed, and the CPU that cpu_meter measured.
PublishCounts = tuple[int, int, dict[str, float]]


def publish_repeat(kind: str, target: Target, pids: list[int], redis: RedisServer, sizes: Sizes) -> PublishCounts:
    """Publish through one front door for ``sizes.publish_s``, then flush Redis."""
    channels = [str(uuid.uuid4()) for _ in range(64)]
    per_process = max(1, sizes.publish_connections // sizes.load_processes)
    function: Callable[..., Any] = {
        "http": loadgen.http_publish_load,
        "grpc_unary": loadgen.grpc_unary_load,
        "grpc_stream": loadgen.grpc_stream_load,
    }[kind]
    if kind == "grpc_stream":
        per_process = max(1, sizes.grpc_streams // sizes.load_processes)
    args = [(target, per_process, sizes.publish_s, channels)] * sizes.load_processes
    with cpu_meter(pids, redis.process.pid) as cpu:
        counts = loadgen.run_in_processes(function, args, timeout_s=sizes.publish_s + 60)
    redis.cli("FLUSHALL")
    return sum(c["ok"] for c in counts), sum(c["failed"] for c in counts), cpu


def publish_h2load_repeat(kind: str, target: Target, pids: list[int], redis: RedisServer, sizes: Sizes) -> PublishCounts:
    """Publish with h2load as the client, ``http`` or ``grpc_stream``, for ``sizes.publish_s``, then flush Redis.

    Conduit must run with deduplication off, because h2load sends the same
    body, and so the same message_id, in every request.
    """
    channels = [str(uuid.uuid4()) for _ in range(64)]
    with cpu_meter(pids, redis.process.pid) as cpu:
        if kind == "grpc_stream":
            result = h2load.run_stream_load(
                target.grpc_port, "/conduit.v1alpha.PublishService/PublishStream", channels,
                seconds=sizes.publish_s, streams=sizes.grpc_streams, token=target.publish_token,
            )
        else:
            result = h2load.run_http_load(
                target.publish_port, [target.publish_path(channel) for channel in channels[: sizes.publish_connections]],
                target.h2load_http_body(), seconds=sizes.publish_s, connections=sizes.publish_connections,
                headers=target.h2load_http_headers(),
            )
    ok, failed = result.messages, 0
    if kind == "grpc_stream":
        # h2load checks only the HTTP status, so the entries Redis added bound the count.
        stored = h2load.stored_entries(redis, channels, org_id=1)
        if stored < ok:
            failed, ok = ok - stored, stored
    redis.cli("FLUSHALL")
    return ok, failed, cpu


class _PublishTally:
    """The rate and CPU per publish of each repeat of a publish scenario, and the failed publishes."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.cpu_us: list[float | None] = []
        self.redis_us: list[float | None] = []
        self.failures = 0

    def add(self, ok: int, failed: int, cpu: dict[str, float], seconds: float) -> None:
        """Record one repeat: ``ok`` publishes in ``seconds`` with the CPU that ``cpu_meter`` measured."""
        self.failures += failed
        self.rates.append(ok / seconds)
        self.cpu_us.append(cpu["cpu_s"] / ok * 1e6 if ok else None)
        self.redis_us.append(cpu["redis_cpu_s"] / ok * 1e6 if ok else None)

    def result(self) -> dict[str, Any]:
        return {
            "publishes_per_s": summary(self.rates),
            "server_cpu_us_per_publish": summary(self.cpu_us),
            "redis_cpu_us_per_publish": summary(self.redis_us),
            "failed": self.failures,
        }


async def _publish_markers(target: Target, plan: list[tuple[int, str]], interval_s: float, connections: int) -> dict[int, float]:
    """Publish ``(marker, channel)`` pairs in batches of ``connections`` every ``interval_s``; return send times.

    A send time is taken just before the request's write, after the request
    is built. Building a Conduit request (a protobuf body with a fresh UUID)
    cost the generator 0.09 ms more than an Nchan one (median, 2-CPU VM,
    requests 0.1 s apart), which would otherwise count as delivery latency
    of Conduit's alone.
    """
    sent: dict[int, float] = {}
    opened = [await asyncio.open_connection(target.host, target.publish_port) for _ in range(connections)]
    try:
        for start in range(0, len(plan), connections):
            batch = plan[start : start + connections]
            requests = [(marker, target.publish_request(channel, marker)) for marker, channel in batch]
            began = time.perf_counter()

            async def send(marker: int, request: bytes, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
                # asyncio.timeout rather than wait_for, which would write from a new task one loop pass later.
                async with asyncio.timeout(10):
                    sent[marker] = time.perf_counter()
                    await loadgen.publish_one(conn[1], conn[0], request)

            await asyncio.gather(*(send(marker, request, conn) for (marker, request), conn in zip(requests, opened, strict=False)))
            await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - began)))
    finally:
        for _, writer in opened:
            writer.close()
    return sent


def _cpu_ns(pids: list[int]) -> int:
    """Return the CPU time of ``pids`` in nanoseconds from /proc/<pid>/schedstat, finer than clock ticks."""
    total = 0
    for pid in pids:
        with suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


def _wait_until_idle(pids: list[int], window_s: float = 0.2, max_busy: float = 0.05, timeout_s: float = 10.0) -> None:
    """Wait until ``pids`` use under ``max_busy`` of one CPU over ``window_s``, or ``timeout_s`` passed.

    A server may still be setting up subscribers after their response heads
    arrived: Conduit's gateway joins each subscription to its channel after
    the head, and a burst of joins triggers full garbage collections of
    hundreds of milliseconds. Publishing starts after that, for every server
    alike, so the latency measured is that of delivery alone.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = _cpu_ns(pids)
        time.sleep(window_s)
        if _cpu_ns(pids) - before < max_busy * window_s * 1e9:
            return


def _deliveries(
    target: Target,
    subscriber_channels: list[str],
    plan: list[tuple[int, str]],
    expected_each: int,
    interval_s: float,
    connections: int,
    pids: list[int],
    redis: RedisServer,
    processes: int,
) -> dict[str, Any]:
    group = SubscriberGroup(target, subscriber_channels, processes)
    try:
        connected = group.connect()
        time.sleep(0.5)
        _wait_until_idle(pids)
        # The subscribers stay connected until close(), so the CPU time
        # excludes the server's work on their disconnects.
        with cpu_meter(pids, redis.process.pid) as cpu:
            sent = asyncio.run(_publish_markers(target, plan, interval_s, connections))
            results = group.finish(expected_each, time.perf_counter() + 10, keep_open=True)
    finally:
        group.close()
    latencies = []
    first_at: dict[int, float] = {}
    for result in results:
        for received in result["received"]:
            for marker, at in received.items():
                if marker in sent:
                    latencies.append(at - sent[marker])
                    first_at[marker] = min(at, first_at.get(marker, at))
    latencies.sort()
    # The first receipt of each message: publish, broker and the server's first
    # write, before the length of the fan-out pass adds to the other subscribers.
    first = sorted(at - sent[marker] for marker, at in first_at.items())
    wanted = len(subscriber_channels) * expected_each
    return {
        "connected": connected,
        "delivered": len(latencies),
        "missing": wanted - len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
        # The tail beyond p99: the latency of the slowest delivery of the run.
        "slowest_ms": latencies[-1] * 1000 if latencies else None,
        "first_p50_ms": percentile(first, 0.5) * 1000 if first else None,
        "server_cpu_us_per_delivery": cpu["cpu_s"] / len(latencies) * 1e6 if latencies else None,
    }


def fanout_repeat(target: Target, count: int, pids: list[int], redis: RedisServer, sizes: Sizes) -> dict[str, Any]:
    channel = str(uuid.uuid4())
    _add_tokens(target, [channel])
    plan = [(marker, channel) for marker in range(1, sizes.messages + 1)]
    return _deliveries(target, [channel] * count, plan, sizes.messages, sizes.interval_s, 1, pids, redis, sizes.load_processes)


def many_channels_repeat(target: Target, pids: list[int], redis: RedisServer, sizes: Sizes) -> dict[str, Any]:
    channels = [str(uuid.uuid4()) for _ in range(sizes.many_channels)]
    _add_tokens(target, channels)
    plan = [(round_ * len(channels) + i + 1, ch) for round_ in range(sizes.many_rounds) for i, ch in enumerate(channels)]
    # Each round publishes to every channel over 8 connections, then pauses.
    return _deliveries(target, channels, plan, sizes.many_rounds, 0.0, 8, pids, redis, sizes.load_processes)


def scenario_idle(target: Target, count: int, pids: list[int], redis: RedisServer, sizes: Sizes) -> dict[str, Any]:
    channels = [str(uuid.uuid4()) for _ in range(sizes.idle_channels)]
    _add_tokens(target, channels)
    group = SubscriberGroup(target, [channels[i % len(channels)] for i in range(count)], sizes.load_processes)
    rss_before = process_stats(pids).rss_bytes
    clients_before = redis.connected_clients()
    try:
        connected = group.connect()
        time.sleep(1.0)
        rss_after = process_stats(pids).rss_bytes
        commands_before = redis.total_commands()
        with cpu_meter(pids, redis.process.pid) as cpu:
            time.sleep(sizes.idle_window_s)
        commands_after = redis.total_commands()
        clients_after = redis.connected_clients()
        blocked = redis.clients_field("blocked_clients")
        results = group.finish(None, 0.0)
    finally:
        group.close()
    # Each INFO call is itself one command.
    commands = commands_after - commands_before - 1
    return {
        "subscribers": count,
        "channels": len(channels),
        "connected": connected,
        "still_connected": sum(r["still_connected"] for r in results),
        "rss_bytes_per_connection": (rss_after - rss_before) / connected if connected else None,
        "redis_commands_per_s": commands / cpu["wall_s"],
        # Pool growth during the connect burst, and the blocking reads that stay open while idle.
        "redis_connections_added": clients_after - clients_before,
        "redis_blocked_clients": blocked,
        "server_cpu_percent_idle": cpu["cpu_s"] / cpu["wall_s"] * 100,
    }


# Measurements of a delivery run that _merge_runs reduces to median, min and
# max over the repeats. The counts stay lists with one entry per repeat.
_SUMMARIZED_DELIVERY_KEYS = ("p50_ms", "p99_ms", "slowest_ms", "first_p50_ms", "server_cpu_us_per_delivery")


def _merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        merged[key] = summary(values) if key in _SUMMARIZED_DELIVERY_KEYS else values
    return merged


def _add_tokens(target: Target, channels: list[str]) -> None:
    if target.kind != "conduit":
        return
    from conduit.tokens import mint_subscriber_token

    for channel in channels:
        target.subscribe_tokens[channel] = mint_subscriber_token(
            _KEYS["private"], issuer="bench", audience="browsers", org_id=1, channel_id=channel
        )


def redis_ceiling(redis: RedisServer, requests: int) -> dict[str, float]:
    """Redis's own XADD and XREAD rates from redis-benchmark, 50 clients, no pipelining."""
    data = "x" * 120
    commands = {
        "xadd_per_s": ["XADD", "bench:ceiling", "MAXLEN", "~", "1200", "*", "data", data],
        "xread_per_s": ["XREAD", "COUNT", "1", "STREAMS", "bench:ceiling", "0"],
    }
    result = {}
    for name, command in commands.items():
        output = subprocess.run(
            ["redis-benchmark", "-h", HOST, "-p", str(redis.port), "-n", str(requests), "-c", "50", "-q", *command],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
        rates = re.findall(r"([\d.]+) requests per second", output)
        result[name] = float(rates[-1]) if rates else float("nan")
    redis.cli("FLUSHALL")
    return result


# --- Targets ----------------------------------------------------------------

_KEYS: dict[str, str] = {}


SCENARIOS = ("idle", "publish", "fanout", "many")
_selected: set[str] = set(SCENARIOS)


@dataclass(frozen=True)
class Server:
    """A target that is up: how to reach it, and the PIDs that do its publish and its delivery work."""

    target: Target
    publish_pids: list[int]
    deliver_pids: list[int]


def conduit_env() -> dict[str, str]:
    """Return the environment of Conduit's servers, with a fresh key pair for subscriber tokens."""
    from conduit.tokens import generate_rsa_key_pair

    private_pem, public_pem = generate_rsa_key_pair()
    _KEYS["private"] = private_pem
    return {
        "PUBLISH_JWT_SECRET": _SECRET, "PUBLISH_JWT_ISSUER": "bench", "PUBLISH_JWT_AUDIENCE": "conduit",
        "GATEWAY_JWT_PUBLIC_KEY": public_pem, "GATEWAY_JWT_ISSUER": "bench", "GATEWAY_JWT_AUDIENCE": "browsers",
        "PUBLISH_RATE_LIMIT": str(10**9), "MAX_STREAM_LEN": "1200", "LOG_FORMAT": "text",
    }


@contextmanager
def conduit_server(redis: RedisServer, env: dict[str, str], workers: int, log_dir: Path) -> Iterator[Server]:
    from conduit.tokens import mint_publisher_token

    with ConduitServers.start(redis.url, env, log_dir, workers) as servers:
        time.sleep(1.0)
        target = Target(
            name="conduit", host=HOST, publish_port=servers.http_port, subscribe_port=servers.gateway_port,
            kind="conduit", grpc_port=servers.grpc_port,
            publish_token=mint_publisher_token(_SECRET, issuer="bench", audience="conduit", ttl_s=7200),
        )
        yield Server(target, servers.pids(servers.publish), servers.pids(servers.gateway))


@contextmanager
def nchan_server(redis: RedisServer, *, use_redis: bool) -> Iterator[Server]:
    with NchanServer.start(redis.url if use_redis else None) as nchan:
        time.sleep(0.5)
        name = "nchan_redis" if use_redis else "nchan_memory"
        target = Target(name=name, host=HOST, publish_port=nchan.port, subscribe_port=nchan.port, kind="nchan")
        pids = nchan.server_pids()
        yield Server(target, pids, pids)


def _h2load_ready() -> bool:
    if "h2load" not in _h2load_state:
        _h2load_state["h2load"] = h2load.ensure_h2load_installed()
    return _h2load_state["h2load"]


_h2load_state: dict[str, bool] = {}


def _publish_kinds(target: Target, *, with_h2load: bool) -> list[str]:
    if target.kind == "nchan":
        return ["http"]
    return ["http", "grpc_stream"] if with_h2load else ["http", "grpc_unary", "grpc_stream"]


def _wait_until_unblocked(redis: RedisServer, timeout_s: float = 10.0) -> None:
    """Wait until no client of ``redis`` is in a blocking read, or ``timeout_s`` passed.

    The idle scenario would count a read that the server before left open as
    the next server's. Conduit's gateway cancels its XREAD when the last
    subscriber leaves, but redis-py sometimes lets a cancelled read run to the
    end of its block (gateway_http/hub_reader.py).
    """
    deadline = time.monotonic() + timeout_s
    while redis.clients_field("blocked_clients") and time.monotonic() < deadline:
        time.sleep(0.1)


class InterleavedRun:
    """The selected scenarios on servers that are all up at once, each scenario's repeats interleaved across them.

    Repeat ``r`` of a scenario runs once on every server, starting with the
    server ``r`` places further on in ``servers``: C, M, R, then M, R, C,
    then R, C, M. So a change in the machine's load during the run falls on
    all targets alike instead of on whichever ran last.
    """

    def __init__(self, servers: dict[str, Server], redis: RedisServer, sizes: Sizes, log: Callable[[str], None]) -> None:
        self.servers = servers
        self.redis = redis
        self.sizes = sizes
        self.log = log
        self.results: dict[str, dict[str, Any]] = {name: {} for name in servers}

    def run(self, conduit_env: dict[str, str], workers: int, log_dir: Path) -> dict[str, dict[str, Any]]:
        """Run the scenarios in ``_selected`` and return each target's results by scenario."""
        # Idle connections come first: a server that served earlier scenarios
        # reuses their freed memory, which hides the cost of a new connection.
        if "idle" in _selected:
            self.idle()
        if "publish" in _selected:
            self.publish(self.servers, publish_repeat, with_h2load=False)
            if _h2load_ready():
                self.publish_h2load(conduit_env, workers, log_dir)
        for count in self.sizes.fanout_counts if "fanout" in _selected else ():
            self.deliveries(
                f"fanout_{count}", f"fan-out to {count}", self.sizes.fanout_repeats, functools.partial(self._fanout_repeat, count)
            )
        if "many" in _selected:
            self.deliveries(
                "many_channels", f"{self.sizes.many_channels} channels", self.sizes.many_repeats, self._many_channels_repeat
            )
        return self.results

    def idle(self) -> None:
        for name, server in self.servers.items():
            for count in self.sizes.idle_counts:
                _wait_until_unblocked(self.redis)
                self.log(f"{name}: {count} idle subscribers")
                self.results[name][f"idle_{count}"] = scenario_idle(
                    server.target, count, server.deliver_pids, self.redis, self.sizes
                )

    def publish(
        self, servers: dict[str, Server], publish_once: Callable[..., PublishCounts], *, with_h2load: bool
    ) -> None:
        """Run each server's publish kinds once per repeat with ``publish_once``: ``publish_repeat`` or ``publish_h2load_repeat``."""
        tallies = {
            name: {kind: _PublishTally() for kind in _publish_kinds(server.target, with_h2load=with_h2load)}
            for name, server in servers.items()
        }
        client = " with h2load" if with_h2load else ""

        def measure(server: Server, repeat: int) -> None:
            for kind, tally in tallies[server.target.name].items():
                repeats = self.sizes.publish_repeats
                self.log(f"{server.target.name}: publish {kind}{client}, repeat {repeat + 1} of {repeats}")
                ok, failed, cpu = publish_once(kind, server.target, server.publish_pids, self.redis, self.sizes)
                tally.add(ok, failed, cpu, self.sizes.publish_s)

        self._interleave(servers, self.sizes.publish_repeats, measure)
        suffix = "_h2load" if with_h2load else ""
        for name, by_kind in tallies.items():
            for kind, tally in by_kind.items():
                self.results[name][f"publish_{kind}{suffix}"] = tally.result()

    def publish_h2load(self, conduit_env: dict[str, str], workers: int, log_dir: Path) -> None:
        """Run the h2load publish rows, Conduit's on a second pair of servers with deduplication off.

        h2load repeats its body's message_ids, which deduplication would store once.
        """
        h2load_log_dir = log_dir / "h2load"
        h2load_log_dir.mkdir(exist_ok=True)
        no_dedup_env = {**conduit_env, "PUBLISH_DEDUP_WINDOW_SEC": "0"}
        with conduit_server(self.redis, no_dedup_env, workers, h2load_log_dir) as conduit:
            # Replacing the value keeps Conduit's place in the rotation.
            servers = {**self.servers, "conduit": conduit}
            self.publish(servers, publish_h2load_repeat, with_h2load=True)

    def deliveries(self, scenario: str, label: str, repeats: int, measure: Callable[[Server], dict[str, Any]]) -> None:
        """Run one delivery scenario on every server ``repeats`` times, then flush Redis."""

        def logged(server: Server, repeat: int) -> dict[str, Any]:
            self.log(f"{server.target.name}: {label}, repeat {repeat + 1} of {repeats}")
            return measure(server)

        runs = self._interleave(self.servers, repeats, logged)
        for name, results in runs.items():
            self.results[name][scenario] = _merge_runs(results)
        self.redis.cli("FLUSHALL")

    def _fanout_repeat(self, count: int, server: Server) -> dict[str, Any]:
        return fanout_repeat(server.target, count, server.deliver_pids, self.redis, self.sizes)

    def _many_channels_repeat(self, server: Server) -> dict[str, Any]:
        return many_channels_repeat(server.target, server.deliver_pids, self.redis, self.sizes)

    def _interleave(
        self, servers: dict[str, Server], repeats: int, measure: Callable[[Server, int], Any]
    ) -> dict[str, list[Any]]:
        """Call ``measure(server, repeat)`` on each server once per repeat, in rotated order; return the results by server.

        Before each call it waits until every server and Redis are idle, so
        that one server's teardown of the run before, such as closing 5,000
        connections, does not fall into the next server's measurement.
        """
        servers_up = [*self.servers.values(), *servers.values()]
        quiet_pids = {self.redis.process.pid}
        quiet_pids.update(pid for server in servers_up for pid in (*server.publish_pids, *server.deliver_pids))
        names = list(servers)
        runs: dict[str, list[Any]] = {name: [] for name in names}
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                _wait_until_idle(list(quiet_pids))
                runs[name].append(measure(servers[name], repeat))
        return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts; validates the whole harness in about a minute")
    parser.add_argument("--out", type=Path, default=None, help="write the raw results as JSON to this file")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per Conduit role (default 1)")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep Conduit's server logs here (default: a temporary folder)")
    parser.add_argument("--skip-nchan", action="store_true", help="measure Conduit and Redis only")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} to run (default: all); the Redis ceiling always runs",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    chosen = {name.strip() for name in args.scenarios.split(",") if name.strip()}
    if not chosen or chosen - set(SCENARIOS):
        parser.error(f"--scenarios takes names from {','.join(SCENARIOS)}, got {args.scenarios!r}")
    _selected.intersection_update(chosen)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    open_files = raise_open_file_limit()
    load = os.getloadavg()
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, load average {load[0]:.2f} at start, open files {open_files}",
        "sizes": sizes.__dict__,
        "command": " ".join(sys.argv),
    }
    nchan_ok = not args.skip_nchan and ensure_nchan_installed()
    with RedisServer.start() as redis:
        log("Redis ceiling")
        results["redis_ceiling"] = redis_ceiling(redis, sizes.redis_benchmark_requests)
        with tempfile.TemporaryDirectory(prefix="bench-conduit-") as temporary, ExitStack() as stack:
            log_dir = args.log_dir or Path(temporary)
            log_dir.mkdir(parents=True, exist_ok=True)
            # Every target stays up for the whole run, so the repeats of a scenario can alternate between them.
            env = conduit_env()
            started = [stack.enter_context(conduit_server(redis, env, args.workers, log_dir))]
            if nchan_ok:
                started.append(stack.enter_context(nchan_server(redis, use_redis=False)))
                started.append(stack.enter_context(nchan_server(redis, use_redis=True)))
            servers = {server.target.name: server for server in started}
            results.update(InterleavedRun(servers, redis, sizes, log).run(env, args.workers, log_dir))
    results["machine"] += f", {os.getloadavg()[0]:.2f} at end"
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
