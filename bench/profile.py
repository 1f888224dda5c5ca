"""Profile one Conduit role under load with py-spy and print where its CPU goes.

Run from the repository root::

    .venv/bin/python -m bench.profile http           # HTTP shim publishes
    .venv/bin/python -m bench.profile grpc_unary     # unary Publish calls
    .venv/bin/python -m bench.profile grpc_stream    # PublishStream publishes
    .venv/bin/python -m bench.profile grpc_stream_h2load  # the same, sent by h2load
    .venv/bin/python -m bench.profile fanout         # gateway, 1,000 subscribers of one channel

It starts a private redis-server and both Conduit roles on loopback ports, as
``bench.run`` does. It runs the load for ``--seconds`` and records the serving
process with ``py-spy record --nonblocking``. Then it prints the rate, the CPU
per operation and the frames with the most samples.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import h2load, loadgen
from bench import run as runner
from bench.loadgen import SubscriberGroup, Target
from bench.procs import HOST, ConduitServers, RedisServer, process_stats


def _top_frames(raw_path: Path, count: int) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        total += int(samples)
        frames = stack.split(";")
        own[frames[-1]] += int(samples)
        for frame in set(frames):
            inclusive[frame] += int(samples)
    lines = [f"{total} samples"]
    lines += [f"{n / total:6.1%} own       {frame}" for frame, n in own.most_common(count)]
    lines += [f"{n / total:6.1%} inclusive {frame}" for frame, n in inclusive.most_common(count * 2)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("load", choices=["http", "grpc_unary", "grpc_stream", "grpc_stream_h2load", "fanout"])
    parser.add_argument("--seconds", type=float, default=6.0, help="load and recording time (default 6)")
    parser.add_argument("--top", type=int, default=20, help="frames to print (default 20)")
    parser.add_argument("--native", action="store_true", help="include native frames (C extensions)")
    args = parser.parse_args()
    runner.raise_open_file_limit()

    from conduit.tokens import generate_rsa_key_pair, mint_publisher_token

    private_pem, public_pem = generate_rsa_key_pair()
    runner._KEYS["private"] = private_pem
    env = {
        "PUBLISH_JWT_SECRET": runner._SECRET, "PUBLISH_JWT_ISSUER": "bench", "PUBLISH_JWT_AUDIENCE": "conduit",
        "GATEWAY_JWT_PUBLIC_KEY": public_pem, "GATEWAY_JWT_ISSUER": "bench", "GATEWAY_JWT_AUDIENCE": "browsers",
        "PUBLISH_RATE_LIMIT": str(10**9),
    }
    if args.load == "grpc_stream_h2load":
        # h2load sends the same message_ids in every call (see bench.h2load).
        env["PUBLISH_DEDUP_WINDOW_SEC"] = "0"
        if not h2load.ensure_h2load_installed():
            print("h2load is missing and could not be installed", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as raw_dir, RedisServer.start() as redis, \
            ConduitServers.start(redis.url, env, Path(raw_dir)) as servers:
        time.sleep(1.0)
        target = Target(
            name="conduit", host=HOST, publish_port=servers.http_port, subscribe_port=servers.gateway_port,
            kind="conduit", grpc_port=servers.grpc_port,
            publish_token=mint_publisher_token(runner._SECRET, issuer="bench", audience="conduit", ttl_s=3600),
        )
        process = servers.gateway if args.load == "fanout" else servers.publish
        raw_path = Path(raw_dir) / "profile.txt"
        group = None
        if args.load == "fanout":
            channel = str(uuid.uuid4())
            runner._add_tokens(target, [channel])
            group = SubscriberGroup(target, [channel] * 1000, 2)
            print(f"{group.connect()} subscribers connected", file=sys.stderr)

        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "-f", "raw",
             "-d", str(int(args.seconds)), "-p", str(process.pid), "-o", str(raw_path),
             # py-spy reads native stacks only from a stopped process.
             *(["--native"] if args.native else ["--nonblocking"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        before = process_stats([process.pid])
        if args.load == "grpc_stream_h2load":
            channels = [str(uuid.uuid4()) for _ in range(64)]
            result = h2load.run_stream_load(
                servers.grpc_port, "/conduit.v1alpha.PublishService/PublishStream", channels,
                seconds=args.seconds, streams=8, token=target.publish_token,
            )
            operations = result.messages
            stored = h2load.stored_entries(redis, channels, org_id=1)
            if stored < operations:
                print(f"h2load counted {operations} messages, but Redis added only {stored} entries: some calls failed", file=sys.stderr)
        elif group is not None:
            messages = int(args.seconds * 10)
            plan = [(marker, channel) for marker in range(1, messages + 1)]
            asyncio.run(runner._publish_markers(target, plan, 0.1, 1))
            results = group.finish(messages, time.perf_counter() + 10)
            operations = sum(len(received) for result in results for received in result["received"])
        else:
            function = {
                "http": loadgen.http_publish_load,
                "grpc_unary": loadgen.grpc_unary_load,
                "grpc_stream": loadgen.grpc_stream_load,
            }[args.load]
            channels = [str(uuid.uuid4()) for _ in range(64)]
            counts = loadgen.run_in_processes(function, [(target, 4, args.seconds, channels)] * 2, args.seconds + 60)
            operations = sum(c["ok"] for c in counts)
        cpu_s = process_stats([process.pid]).cpu_s - before.cpu_s
        spy.wait(timeout=args.seconds + 30)

        print(f"{args.load}: {operations / args.seconds:.0f} operations/s, {cpu_s / max(operations, 1) * 1e6:.1f} µs CPU each")
        if raw_path.exists():
            print("\n".join(_top_frames(raw_path, args.top)))
        else:
            print("py-spy wrote no profile; is it installed (pip install -e '.[bench]')?", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
