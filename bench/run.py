"""Benchmark Conduit against Nchan (in memory and on Redis) in one run, with Redis's own rate as the ceiling.

Run from the repository root::

    .venv/bin/python -m bench.run --quick          # small counts, about a minute
    .venv/bin/python -m bench.run --out bench.json # the full run, about 15 minutes

It starts everything it measures as child processes on loopback ports: one
private redis-server, ``conduit serve publish`` and ``conduit serve gateway``,
and nginx with Nchan (one worker) with and without Nchan's Redis backend.
nginx and its Nchan module, and h2load (nghttp2-client) for the publish rows
that use a C client, are installed with apt-get when missing. Results
are medians of the repeats with their min and max; ratios compare Conduit with
Nchan from the same run. The Markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
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
    idle_counts: tuple[int, ...]
    idle_channels: int
    idle_window_s: float
    redis_benchmark_requests: int


QUICK = Sizes(2, 2, 8, 2, 8, (20, 100), 1, 5, 0.1, 50, 3, (50, 200), 10, 2, 20000)
FULL = Sizes(5, 3, 16, 2, 16, (100, 1000, 5000), 3, 20, 0.1, 1000, 5, (1000, 5000), 100, 5, 200000)


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


def scenario_publish(kind: str, target: Target, pids: list[int], redis: RedisServer, sizes: Sizes) -> dict[str, Any]:
    """Publishes per second and server CPU per publish for one front door."""
    channels = [str(uuid.uuid4()) for _ in range(64)]
    per_process = max(1, sizes.publish_connections // sizes.load_processes)
    function: Callable[..., Any] = {
        "http": loadgen.http_publish_load,
        "grpc_unary": loadgen.grpc_unary_load,
        "grpc_stream": loadgen.grpc_stream_load,
    }[kind]
    if kind == "grpc_stream":
        per_process = max(1, sizes.grpc_streams // sizes.load_processes)
    tally = _PublishTally()
    for _ in range(sizes.publish_repeats):
        args = [(target, per_process, sizes.publish_s, channels)] * sizes.load_processes
        with cpu_meter(pids, redis.process.pid) as cpu:
            counts = loadgen.run_in_processes(function, args, timeout_s=sizes.publish_s + 60)
        tally.add(sum(c["ok"] for c in counts), sum(c["failed"] for c in counts), cpu, sizes.publish_s)
        redis.cli("FLUSHALL")
    return tally.result()


def scenario_publish_h2load(kind: str, target: Target, pids: list[int], redis: RedisServer, sizes: Sizes) -> dict[str, Any]:
    """Publishes per second and server CPU per publish with h2load as the client: ``http`` or ``grpc_stream``.

    Conduit must run with deduplication off, because h2load sends the same
    body, and so the same message_id, in every request.
    """
    channels = [str(uuid.uuid4()) for _ in range(64)]
    tally = _PublishTally()
    for _ in range(sizes.publish_repeats):
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
        tally.add(ok, failed, cpu, sizes.publish_s)
        redis.cli("FLUSHALL")
    return tally.result()


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


def scenario_fanout(target: Target, count: int, pids: list[int], redis: RedisServer, sizes: Sizes) -> dict[str, Any]:
    runs = []
    for _ in range(sizes.fanout_repeats):
        channel = str(uuid.uuid4())
        _add_tokens(target, [channel])
        plan = [(marker, channel) for marker in range(1, sizes.messages + 1)]
        runs.append(
            _deliveries(target, [channel] * count, plan, sizes.messages, sizes.interval_s, 1, pids, redis, sizes.load_processes)
        )
    return _merge_runs(runs)


def scenario_many_channels(target: Target, pids: list[int], redis: RedisServer, sizes: Sizes) -> dict[str, Any]:
    channels = [str(uuid.uuid4()) for _ in range(sizes.many_channels)]
    _add_tokens(target, channels)
    plan = [(round_ * len(channels) + i + 1, ch) for round_ in range(sizes.many_rounds) for i, ch in enumerate(channels)]
    # Each round publishes to every channel over 8 connections, then pauses.
    result = _deliveries(target, channels, plan, sizes.many_rounds, 0.0, 8, pids, redis, sizes.load_processes)
    return _merge_runs([result])


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
# max over the repeats; it keeps the counts as one list entry per repeat.
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


def run_target(name: str, target: Target, pids: dict[str, list[int]], redis: RedisServer, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # Idle connections come first: a server that served earlier scenarios
    # reuses their freed memory, which hides the cost of a new connection.
    for count in sizes.idle_counts if "idle" in _selected else ():
        log(f"{name}: {count} idle subscribers")
        results[f"idle_{count}"] = scenario_idle(target, count, pids["deliver"], redis, sizes)
    publish_kinds = ["http", "grpc_unary", "grpc_stream"] if target.kind == "conduit" else ["http"]
    for kind in publish_kinds if "publish" in _selected else ():
        log(f"{name}: publish {kind}")
        results[f"publish_{kind}"] = scenario_publish(kind, target, pids["publish"], redis, sizes)
    # Conduit's h2load rows run on servers with deduplication off (run_conduit).
    if target.kind == "nchan" and "publish" in _selected and _h2load_ready():
        log(f"{name}: publish http with h2load")
        results["publish_http_h2load"] = scenario_publish_h2load("http", target, pids["publish"], redis, sizes)
    for count in sizes.fanout_counts if "fanout" in _selected else ():
        log(f"{name}: fan-out to {count}")
        results[f"fanout_{count}"] = scenario_fanout(target, count, pids["deliver"], redis, sizes)
        redis.cli("FLUSHALL")
    if "many" in _selected:
        log(f"{name}: {sizes.many_channels} channels")
        results["many_channels"] = scenario_many_channels(target, pids["deliver"], redis, sizes)
        redis.cli("FLUSHALL")
    return results


def run_conduit(redis: RedisServer, sizes: Sizes, workers: int, log_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from conduit.tokens import generate_rsa_key_pair, mint_publisher_token

    private_pem, public_pem = generate_rsa_key_pair()
    _KEYS["private"] = private_pem
    env = {
        "PUBLISH_JWT_SECRET": _SECRET, "PUBLISH_JWT_ISSUER": "bench", "PUBLISH_JWT_AUDIENCE": "conduit",
        "GATEWAY_JWT_PUBLIC_KEY": public_pem, "GATEWAY_JWT_ISSUER": "bench", "GATEWAY_JWT_AUDIENCE": "browsers",
        "PUBLISH_RATE_LIMIT": str(10**9), "MAX_STREAM_LEN": "1200", "LOG_FORMAT": "text",
    }
    with ConduitServers.start(redis.url, env, log_dir, workers) as servers:
        time.sleep(1.0)
        target = Target(
            name="conduit", host=HOST, publish_port=servers.http_port, subscribe_port=servers.gateway_port,
            kind="conduit", grpc_port=servers.grpc_port,
            publish_token=mint_publisher_token(_SECRET, issuer="bench", audience="conduit", ttl_s=7200),
        )
        pids = {"publish": servers.pids(servers.publish), "deliver": servers.pids(servers.gateway)}
        results = run_target("conduit", target, pids, redis, sizes, log)
    if "publish" in _selected and _h2load_ready():
        redis.cli("FLUSHALL")
        # h2load repeats its body's message_ids, which deduplication would store once.
        h2load_log_dir = log_dir / "h2load"
        h2load_log_dir.mkdir(exist_ok=True)
        with ConduitServers.start(redis.url, {**env, "PUBLISH_DEDUP_WINDOW_SEC": "0"}, h2load_log_dir, workers) as servers:
            time.sleep(1.0)
            target = replace(
                target, publish_port=servers.http_port, subscribe_port=servers.gateway_port, grpc_port=servers.grpc_port
            )
            for kind in ("http", "grpc_stream"):
                log(f"conduit: publish {kind} with h2load, deduplication off")
                results[f"publish_{kind}_h2load"] = scenario_publish_h2load(
                    kind, target, servers.pids(servers.publish), redis, sizes
                )
    return results


def _h2load_ready() -> bool:
    if "h2load" not in _h2load_state:
        _h2load_state["h2load"] = h2load.ensure_h2load_installed()
    return _h2load_state["h2load"]


_h2load_state: dict[str, bool] = {}


def run_nchan(redis: RedisServer, use_redis: bool, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    name = "nchan_redis" if use_redis else "nchan_memory"
    with NchanServer.start(redis.url if use_redis else None) as nchan:
        time.sleep(0.5)
        target = Target(name=name, host=HOST, publish_port=nchan.port, subscribe_port=nchan.port, kind="nchan")
        pids = nchan.server_pids()
        return run_target(name, target, {"publish": pids, "deliver": pids}, redis, sizes, log)


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
        with tempfile.TemporaryDirectory(prefix="bench-conduit-") as temporary:
            log_dir = args.log_dir or Path(temporary)
            log_dir.mkdir(parents=True, exist_ok=True)
            results["conduit"] = run_conduit(redis, sizes, args.workers, log_dir, log)
        redis.cli("FLUSHALL")
        if nchan_ok:
            results["nchan_memory"] = run_nchan(redis, False, sizes, log)
            redis.cli("FLUSHALL")
            results["nchan_redis"] = run_nchan(redis, True, sizes, log)
    results["machine"] += f", {os.getloadavg()[0]:.2f} at end"
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
