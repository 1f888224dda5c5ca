"""Microbenchmarks of the publish path's parts, each measured rather than assumed.

Run from the repository root::

    .venv/bin/python -m bench.micro [--quick] [--redis-url redis://127.0.0.1:PORT]

Without ``--redis-url`` it starts a private redis-server on a free loopback
port for the Redis cases and stops it by PID at the end. Prints one JSON object
per case; ``docs/benchmarks.md`` keeps a table of a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.procs import RedisServer
from broker.factory import create_broker
from broker.keys import rate_limit_key, stream_key, tracking_key
from conduit.sdk import build_request
from conduit.settings import BrokerSettings, JwtSettings
from conduit.tokens import mint_publisher_token
from conduit.v1alpha import publish_pb2
from publish_grpc.auth import TokenVerifier
from publish_grpc.validation import validate_publish


def _per_call_us(function: Callable[[], Any], count: int) -> float:
    """Return the median over three runs of the time per call of ``function``, in microseconds."""
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            function()
        runs.append((time.perf_counter() - start) / count * 1e6)
    return sorted(runs)[1]


def _sample_request() -> bytes:
    request = build_request(
        org_id=1,
        channel_id=str(uuid.uuid4()),
        phase=publish_pb2.PHASE_DELTA,
        sequence=7,
        payload={"value": " tokens", "index": 7, "meta": {"model": "m", "done": False}},
    )
    return request.SerializeToString()


def bench_protobuf(count: int) -> dict[str, Any]:
    from google.protobuf.internal import api_implementation

    data = _sample_request()
    return {
        "case": "protobuf",
        "backend": api_implementation.Type(),
        "decode_us": round(_per_call_us(lambda: publish_pb2.PublishRequest.FromString(data), count), 2),
        "validate_us": round(_per_call_us(lambda: validate_publish(data, max_message_bytes=16384), count), 2),
    }


def bench_token_cache(count: int) -> dict[str, Any]:
    settings = JwtSettings(key="bench-secret-0123456789abcdef0123456789", issuer="bench", audience="conduit")
    token = mint_publisher_token(settings.key, issuer="bench", audience="conduit")
    header = f"Bearer {token}"
    cached = TokenVerifier(settings)
    uncached = TokenVerifier(settings, cache_size=0)
    return {
        "case": "token_verify",
        "cached_us": round(_per_call_us(lambda: cached.verify(header), count), 2),
        "uncached_us": round(_per_call_us(lambda: uncached.verify(header), count // 10 or 1), 2),
    }


def bench_sse_json(count: int) -> dict[str, Any]:
    """Compare the encoders for the gateway's SSE ``data`` line on one typical event."""
    import orjson

    data = {
        "event_type": "stream",
        "message_id": str(uuid.uuid4()),
        "channel_id": str(uuid.uuid4()),
        "sequence": 7,
        "phase": "PHASE_DELTA",
        "payload": {"index": 7, "meta": {"done": False, "model": "m"}, "value": " tokens é"},
    }
    stdlib = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    result: dict[str, Any] = {
        "case": "sse_json",
        "stdlib_json_us": round(
            _per_call_us(lambda: json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(), count), 3
        ),
        "orjson_us": round(_per_call_us(lambda: orjson.dumps(data), count), 3),
        "orjson_same_bytes": orjson.dumps(data) == stdlib,
    }
    try:
        import msgspec

        encoder = msgspec.json.Encoder()
        result["msgspec_us"] = round(_per_call_us(lambda: encoder.encode(data), count), 3)
        result["msgspec_same_bytes"] = encoder.encode(data) == stdlib
    except ImportError:
        pass
    try:
        from broker.base import Entry
        from gateway_http.events import encode_entry

        entry = Entry("1700000000000-0", _sample_request())
        result["encode_entry_us"] = round(_per_call_us(lambda: encode_entry(entry), count), 2)
    except ImportError:
        pass
    return result


async def _append_rate(redis_url: str, count: int, concurrency: int) -> float:
    """Return appends per second through RedisBroker.append with ``concurrency`` tasks."""
    settings = BrokerSettings(redis_url=redis_url, redis_cluster=False, rate_limit=10**9)
    broker = create_broker(settings)
    data = _sample_request()
    keys = [stream_key(1, str(uuid.uuid4())) for _ in range(concurrency)]
    try:
        async def worker(key: str) -> None:
            for _ in range(count // concurrency):
                await broker.append(key, data, end=False)

        start = time.perf_counter()
        await asyncio.gather(*(worker(key) for key in keys))
        return count // concurrency * concurrency / (time.perf_counter() - start)
    finally:
        await broker.close()


async def _pipeline_compare(redis_url: str, count: int) -> dict[str, float]:
    """Time the tracking ZADD and the append script sequentially (two round trips) and pipelined (one)."""
    from redis.asyncio import Redis

    from broker.redis_broker import _APPEND_SCRIPT

    client = Redis.from_url(redis_url)
    script = client.register_script(_APPEND_SCRIPT)
    data = _sample_request()
    key = stream_key(1, str(uuid.uuid4()))
    args = [data, 1200, 10**9, 1000, 0, 120]
    try:
        await script(keys=[key, rate_limit_key(key)], args=args)
        start = time.perf_counter()
        for _ in range(count):
            await client.zadd(tracking_key(key), {key: int(time.time())})
            await script(keys=[key, rate_limit_key(key)], args=args)
        sequential = (time.perf_counter() - start) / count * 1e6

        start = time.perf_counter()
        for _ in range(count):
            pipe = client.pipeline(transaction=False)
            pipe.zadd(tracking_key(key), {key: int(time.time())})
            pipe.evalsha(script.sha, 2, key, rate_limit_key(key), *args)
            await pipe.execute()
        pipelined = (time.perf_counter() - start) / count * 1e6
        return {"sequential_us": round(sequential, 1), "pipelined_us": round(pipelined, 1)}
    finally:
        await client.aclose()


def bench_redis(redis_url: str, count: int) -> list[dict[str, Any]]:
    results = []
    for loop_name in ("asyncio", "uvloop"):
        if loop_name == "uvloop":
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        else:
            runner = asyncio.Runner()
        with runner:
            rate = runner.run(_append_rate(redis_url, count, 32))
            compare = runner.run(_pipeline_compare(redis_url, count // 4))
        results.append({"case": "broker_append", "loop": loop_name, "appends_per_s": round(rate), "concurrency": 32})
        results.append({"case": "zadd_then_evalsha", "loop": loop_name, **compare})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    args = parser.parse_args()
    count = 2000 if args.quick else 20000

    for result in (bench_protobuf(count), bench_token_cache(count), bench_sse_json(count)):
        print(json.dumps(result), flush=True)
    if args.redis_url:
        results = bench_redis(args.redis_url, count)
    else:
        with RedisServer.start() as redis:
            results = bench_redis(redis.url, count)
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
