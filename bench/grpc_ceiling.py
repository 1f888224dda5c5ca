"""Measure how many messages per second grpcio itself takes on one stream (or unary) method on this machine.

Run from the repository root::

    .venv/bin/python -m bench.grpc_ceiling                  # every server and load below
    .venv/bin/python -m bench.grpc_ceiling --server aio --load h2load

The server under test registers ``PublishStream`` (and ``Publish``, measured
with ``--unary``) under Conduit's method names and responds to each request
with one fixed, pre-encoded PublishResponse without decoding the request.
Nothing else runs per message, so its rate and CPU per message are what
grpcio and Python cost before Conduit does any work.

Servers: ``aio`` (grpc.aio, async generator handler), ``aio_uvloop`` (the
same on uvloop's event loop, as ``conduit serve`` runs), ``aio_rw`` (grpc.aio,
``context.read``/``context.write`` handler) and ``sync`` (``grpc.server`` with
a thread pool). Loads: ``python`` (``bench.loadgen.grpc_stream_load`` or
``grpc_unary_load``, as the benchmark runs them) and ``h2load`` (nghttp2's C client, see
``bench.h2load``). The CPU per message is the server's utime + stime from
/proc over the messages it responded to.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent import futures

from bench import h2load, loadgen
from bench.loadgen import Target
from bench.procs import HOST, free_port, process_stats, stop_process, wait_for_port

SERVICE = "conduit.v1alpha.PublishService"
SERVERS = ("aio", "aio_uvloop", "aio_rw", "sync")
LOADS = ("python", "h2load")


def _response() -> bytes:
    from conduit.v1alpha.publish_pb2 import PublishResponse

    return PublishResponse(stream_id="1764892800000-0").SerializeToString()


def _serve_aio(port: int, read_write: bool, uvloop: bool) -> None:
    import grpc

    response = _response()

    async def echo(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _request in requests:
            yield response

    async def echo_read_write(_requests: object, context: grpc.aio.ServicerContext) -> None:
        while (await context.read()) is not grpc.aio.EOF:
            await context.write(response)

    async def echo_unary(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            echo_read_write if read_write else echo, request_deserializer=None, response_serializer=None
        )
        unary = grpc.unary_unary_rpc_method_handler(echo_unary, request_deserializer=None, response_serializer=None)
        handlers = {"PublishStream": handler, "Publish": unary}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        await server.wait_for_termination()

    if uvloop:
        import uvloop as uvloop_module

        with asyncio.Runner(loop_factory=uvloop_module.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def _serve_sync(port: int, threads: int) -> None:
    import grpc

    response = _response()

    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _request in requests:
            yield response

    def echo_unary(_request: bytes, context: grpc.ServicerContext) -> bytes:
        return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    handlers = {
        "PublishStream": grpc.stream_stream_rpc_method_handler(echo, request_deserializer=None, response_serializer=None),
        "Publish": grpc.unary_unary_rpc_method_handler(echo_unary, request_deserializer=None, response_serializer=None),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{HOST}:{port}")
    server.start()
    server.wait_for_termination()


def _measure(server: str, load: str, seconds: float, streams: int, messages_per_call: int, unary: bool) -> str:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.grpc_ceiling", "--serve", server, "--port", str(port), "--streams", str(streams)])
    try:
        wait_for_port(port, process)
        time.sleep(0.5)
        channels = [str(uuid.uuid4()) for _ in range(64)]
        before = process_stats([process.pid])
        started = time.perf_counter()
        if load == "python":
            target = Target(name="ceiling", host=HOST, publish_port=0, subscribe_port=0, kind="conduit", grpc_port=port)
            function = loadgen.grpc_unary_load if unary else loadgen.grpc_stream_load
            counts = loadgen.run_in_processes(function, [(target, streams // 2, seconds, channels)] * 2, seconds + 60)
            messages = sum(c["ok"] for c in counts)
        else:
            # A unary call is a call whose body has one message.
            result = h2load.run_stream_load(
                port, f"/{SERVICE}/{'Publish' if unary else 'PublishStream'}", channels,
                seconds=seconds, streams=streams, messages_per_call=1 if unary else messages_per_call,
            )
            messages = result.messages
        wall_s = time.perf_counter() - started
        cpu_s = process_stats([process.pid]).cpu_s - before.cpu_s
    finally:
        stop_process(process)
    return (
        f"{'unary' if unary else 'stream':6} {server:10} {load:7} {messages / wall_s:9.0f} messages/s  "
        f"{cpu_s / max(messages, 1) * 1e6:6.1f} µs server CPU each  ({messages} in {wall_s:.1f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=SERVERS, action="append", help="server to measure (default: all)")
    parser.add_argument("--load", choices=LOADS, action="append", help="load generator (default: both)")
    parser.add_argument("--seconds", type=float, default=5.0, help="load time per row (default 5)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent PublishStream calls (default 16)")
    parser.add_argument("--messages-per-call", type=int, default=h2load.MESSAGES_PER_CALL,
                        help=f"messages in each h2load call (default {h2load.MESSAGES_PER_CALL})")
    parser.add_argument("--unary", action="store_true", help="measure unary Publish calls instead of PublishStream")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "sync":
        _serve_sync(args.port, threads=args.streams + 4)
        return 0
    if args.serve:
        _serve_aio(args.port, read_write=args.serve == "aio_rw", uvloop=args.serve == "aio_uvloop")
        return 0
    for server in args.server or SERVERS:
        for load in args.load or LOADS:
            print(_measure(server, load, args.seconds, args.streams, args.messages_per_call, args.unary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
