"""Load generator: HTTP publishers and SSE subscribers on raw asyncio sockets, gRPC publishers on grpc.aio.

Raw sockets keep the client's cost per request to a few microseconds, so the
server, not the generator, is what a run measures. Subscribers and
publishers can run in several forked processes; receive times come from
``time.perf_counter``, which is CLOCK_MONOTONIC on Linux and so comparable
across processes. Every loop stops at a count or a deadline.

Each published message carries a marker ``#<n>#`` in its payload. A
subscriber records when it first sees each marker, so latency is the receive
time minus the time the publisher sent message ``n``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Target",
    "grpc_stream_load",
    "grpc_unary_load",
    "http_publish_load",
    "publish_one",
    "run_in_processes",
    "SubscriberGroup",
]

_MARKER = re.compile(rb"#(\d+)#")
_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Target:
    """How to publish to and subscribe on one server under test."""

    name: str
    host: str
    publish_port: int
    subscribe_port: int
    kind: str
    """``conduit`` or ``nchan``."""
    publish_token: str = ""
    subscribe_tokens: dict[str, str] = field(default_factory=dict)
    grpc_port: int = 0

    def publish_request(self, channel: str, marker: int) -> bytes:
        """Return a whole HTTP/1.1 keep-alive request that publishes ``marker`` to ``channel``."""
        if self.kind == "nchan":
            body = f"#{marker}#".encode()
            path = f"/pub/{channel}"
            auth = ""
        else:
            body = conduit_body(channel, marker)
            path = f"/publish/1/{channel}"
            auth = f"authorization: Bearer {self.publish_token}\r\n"
        head = f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n{auth}content-length: {len(body)}\r\n\r\n"
        return head.encode() + body

    def publish_request_builder(self, channel: str) -> Callable[[int], bytes]:
        """Return a function of ``n`` that returns ``publish_request(channel, n)``'s equivalent, built cheaply.

        Conduit's requests differ only in their message_id (see
        ``conduit_body_builder``) and carry the marker ``#1#``, so building one
        costs about as much as an Nchan request, a few string operations.
        """
        if self.kind == "nchan":
            return functools.partial(self.publish_request, channel)
        body = conduit_body_builder(channel)
        head = (
            f"POST /publish/1/{channel} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"authorization: Bearer {self.publish_token}\r\ncontent-length: {len(body(0))}\r\n\r\n"
        ).encode()
        return lambda n: head + body(n)

    def publish_path(self, channel: str) -> str:
        """Return the HTTP path that publishes to ``channel``."""
        return f"/pub/{channel}" if self.kind == "nchan" else f"/publish/1/{channel}"

    def h2load_http_body(self) -> bytes:
        """Return one body that publishes to any ``publish_path``: Conduit takes org_id and channel_id from the path."""
        if self.kind == "nchan":
            return b"#1#"
        from conduit.v1alpha import publish_pb2

        request = publish_pb2.PublishRequest(message_id=str(uuid.uuid4()), phase=publish_pb2.PHASE_DELTA, sequence=1)
        request.payload["m"] = "#1#"
        return request.SerializeToString()

    def h2load_http_headers(self) -> list[str]:
        return [] if self.kind == "nchan" else [f"authorization: Bearer {self.publish_token}"]

    def subscribe_request(self, channel: str) -> bytes:
        if self.kind == "nchan":
            path = f"/sub/{channel}"
        else:
            path = f"/events/1?channel_id={channel}&token={self.subscribe_tokens[channel]}"
        return f"GET {path} HTTP/1.1\r\nhost: {self.host}\r\naccept: text/event-stream\r\n\r\n".encode()


def conduit_body(channel: str, marker: int) -> bytes:
    """Return an encoded PublishRequest with a fresh message_id, so deduplication never drops one."""
    from conduit.v1alpha import publish_pb2

    request = publish_pb2.PublishRequest(
        org_id=1, channel_id=channel, message_id=str(uuid.uuid4()), phase=publish_pb2.PHASE_DELTA, sequence=1
    )
    request.payload["m"] = f"#{marker}#"
    return request.SerializeToString()


def conduit_body_builder(channel: str) -> Callable[[int], bytes]:
    """Return a function of ``n`` that returns an encoded PublishRequest to ``channel`` with a message_id unique to ``n``.

    The request is encoded once, and each call splices ``n`` as the last 12
    hex digits of the message_id, after a random first group that keeps the
    ids of separate builders apart. So a publisher of many messages pays no
    protobuf encode and no uuid4 per message: those cost the Python generator
    more for Conduit than an Nchan body does, on the CPUs that the servers use.
    """
    from conduit.v1alpha import publish_pb2

    placeholder = f"{uuid.uuid4().hex[:8]}-0000-4000-8000-{'0' * 12}"
    request = publish_pb2.PublishRequest(
        org_id=1, channel_id=channel, message_id=placeholder, phase=publish_pb2.PHASE_DELTA, sequence=1
    )
    request.payload["m"] = "#1#"
    encoded = request.SerializeToString()
    start = encoded.index(placeholder.encode()) + len(placeholder) - 12
    before, after = encoded[:start], encoded[start + 12 :]
    return lambda n: b"%b%012x%b" % (before, n % 16**12, after)


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked body); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    match = re.search(rb"content-length:\s*(\d+)", lower)
    if match:
        await reader.readexactly(int(match.group(1)))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def publish_one(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, request: bytes) -> int:
    writer.write(request)
    return await _read_response(reader)


async def _http_publisher(target: Target, channels: list[str], deadline: float, max_count: int) -> tuple[int, int]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(target.host, target.publish_port), _CONNECT_TIMEOUT_S
    )
    ok = failed = 0
    builders = [target.publish_request_builder(channel) for channel in channels]
    try:
        index = 0
        while time.perf_counter() < deadline and ok + failed < max_count:
            build = builders[index % len(builders)]
            index += 1
            status = await asyncio.wait_for(publish_one(writer, reader, build(index)), 10)
            if status < 300:
                ok += 1
            else:
                failed += 1
    finally:
        writer.close()
    return ok, failed


async def http_publish_load(target: Target, connections: int, duration_s: float, channels: list[str]) -> dict[str, int]:
    deadline = time.perf_counter() + duration_s
    results = await asyncio.gather(
        *(_http_publisher(target, channels[i::connections] or channels, deadline, 10**8) for i in range(connections))
    )
    return {"ok": sum(r[0] for r in results), "failed": sum(r[1] for r in results)}


async def grpc_unary_load(target: Target, concurrency: int, duration_s: float, channels: list[str]) -> dict[str, int]:
    import grpc

    metadata = (("authorization", f"Bearer {target.publish_token}"),)
    deadline = time.perf_counter() + duration_s
    counts = {"ok": 0, "failed": 0}
    async with grpc.aio.insecure_channel(f"{target.host}:{target.grpc_port}") as channel:
        # Raw bytes in and out, so the client pays no protobuf decode per reply.
        call = channel.unary_unary(
            "/conduit.v1alpha.PublishService/Publish", request_serializer=None, response_deserializer=None
        )

        async def worker(offset: int) -> None:
            builders = [conduit_body_builder(channel) for channel in channels]
            index = offset
            while time.perf_counter() < deadline:
                index += concurrency
                try:
                    await call(builders[index % len(builders)](index), metadata=metadata, timeout=10)
                    counts["ok"] += 1
                except grpc.aio.AioRpcError:
                    counts["failed"] += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return counts


async def grpc_stream_load(target: Target, streams: int, duration_s: float, channels: list[str]) -> dict[str, int]:
    """Open ``streams`` PublishStream calls, each writing to one channel as fast as replies allow with a window."""
    import grpc

    metadata = (("authorization", f"Bearer {target.publish_token}"),)
    deadline = time.perf_counter() + duration_s
    counts = {"ok": 0, "failed": 0}
    window = 64
    async with grpc.aio.insecure_channel(f"{target.host}:{target.grpc_port}") as channel:
        method = channel.stream_stream(
            "/conduit.v1alpha.PublishService/PublishStream", request_serializer=None, response_deserializer=None
        )

        async def one_stream(number: int) -> None:
            build = conduit_body_builder(channels[number % len(channels)])
            credits = asyncio.Semaphore(window)

            async def requests() -> Any:
                index = 0
                while time.perf_counter() < deadline:
                    await credits.acquire()
                    index += 1
                    yield build(index)

            call = method(requests(), metadata=metadata, timeout=duration_s + 30)
            try:
                async for _reply in call:
                    counts["ok"] += 1
                    credits.release()
            except grpc.aio.AioRpcError:
                counts["failed"] += 1

        await asyncio.gather(*(one_stream(i) for i in range(streams)))
    return counts


def _process_main(function: Callable[..., Any], args: tuple[Any, ...], conn: multiprocessing.connection.Connection) -> None:
    try:
        conn.send(("ok", asyncio.run(function(*args))))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", repr(error)))
    finally:
        conn.close()


def run_in_processes(function: Callable[..., Any], args_per_process: list[tuple[Any, ...]], timeout_s: float) -> list[Any]:
    """Run ``asyncio.run(function(*args))`` in one forked process per args tuple; return their results."""
    context = multiprocessing.get_context("fork")
    started = []
    for args in args_per_process:
        parent_end, child_end = context.Pipe(duplex=False)
        process = context.Process(target=_process_main, args=(function, args, child_end))
        process.start()
        child_end.close()
        started.append((process, parent_end))
    results = []
    deadline = time.monotonic() + timeout_s
    try:
        for process, conn in started:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load process {process.pid} gave no result within {timeout_s:g} s")
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"load process {process.pid} failed: {value}")
            results.append(value)
    finally:
        for process, _conn in started:
            process.join(5)
            if process.exitcode is None:
                process.kill()
                process.join(5)
    return results


# --- Subscribers -------------------------------------------------------------


class _Subscriber(asyncio.Protocol):
    """One SSE connection that records the first receive time of each marker.

    A protocol rather than a stream reader with a task: the receive time is
    taken in ``data_received``, when the event loop reads the socket, and an
    event costs the generator one callback instead of a task wake-up. With
    thousands of subscribers the generator shares the CPUs with the server
    under test, so its cost per event is part of every latency it measures.
    """

    def __init__(self, request: bytes) -> None:
        self.received: dict[int, float] = {}
        self.connected = False
        self.closed = False
        self._request = request
        self._head = b""
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._response: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def run(self, target: Target, ready: asyncio.Semaphore) -> None:
        """Connect and wait for the response head; the protocol's callbacks take the events from then on."""
        loop = asyncio.get_running_loop()
        try:
            async with ready:
                await asyncio.wait_for(
                    loop.create_connection(lambda: self, target.host, target.subscribe_port), _CONNECT_TIMEOUT_S
                )
                self.connected = await asyncio.wait_for(asyncio.shield(self._response), _CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            self.close()
        if not self.connected:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._transport.write(self._request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._response.done():
            self._response.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._response.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            ok = self._head[9:12] == b"200"
            data, self._head = self._head[end + 4 :], b""
            self._response.set_result(ok)
            if not ok:
                return
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return
        complete, self._buffer = buffer[: end + 2], buffer[end + 2 :]
        for match in _MARKER.finditer(complete):
            self.received.setdefault(int(match.group(1)), now)


async def _subscriber_process(
    target: Target,
    channels: list[str],
    control: multiprocessing.connection.Connection,
    results: multiprocessing.connection.Connection,
) -> None:
    """Connect one subscriber per entry of ``channels``, report the connected count, then run until the parent's command ends it.

    The results go to ``results`` before the connections close. After the
    command ``("until", expected, deadline, True)`` the connections stay open
    until the parent sends ``("close",)``, so the parent can read the server's
    CPU time before the server handles the disconnects.
    """
    loop = asyncio.get_running_loop()
    ready = asyncio.Semaphore(200)
    subscribers = [_Subscriber(target.subscribe_request(channel)) for channel in channels]
    tasks = [asyncio.create_task(sub.run(target, ready)) for sub in subscribers]
    try:
        deadline = time.monotonic() + 60
        # Connected, or given up on, within the deadline.
        while time.monotonic() < deadline:
            pending = sum(1 for sub in subscribers if not sub.connected and not sub.closed)
            if pending == 0:
                break
            await asyncio.sleep(0.05)
        control.send(("ready", sum(sub.connected and not sub.closed for sub in subscribers)))
        # The parent sends ("stop",) or ("until", expected_count, deadline_monotonic, keep_open).
        command = await loop.run_in_executor(None, _recv_with_timeout, control, 600.0)
        keep_open = False
        if command[0] == "until":
            _, expected, until, keep_open = command
            while time.perf_counter() < until:
                if all(len(sub.received) >= expected or sub.closed for sub in subscribers):
                    break
                await asyncio.sleep(0.02)
        results.send({
            "received": [sub.received for sub in subscribers],
            "still_connected": sum(sub.connected and not sub.closed for sub in subscribers),
        })
        if keep_open:
            await loop.run_in_executor(None, _recv_with_timeout, control, 600.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in subscribers:
            sub.close()


def _recv_with_timeout(conn: multiprocessing.connection.Connection, timeout_s: float) -> Any:
    """Return the parent's next command; ``("stop",)`` after ``timeout_s`` or when the parent closed its end."""
    try:
        if not conn.poll(timeout_s):
            return ("stop",)
        return conn.recv()
    except (EOFError, OSError):
        return ("stop",)


def _subscriber_main(target: Target, channels: list[str], control: Any, results: Any) -> None:
    try:
        # SCHED_BATCH: a wake-up of this process does not preempt the server
        # under test. Otherwise, on a machine where both share the CPUs, the
        # server loses its CPU in the middle of a fan-out pass to the
        # subscribers it just woke, which a client on its own machine never
        # causes. Linux only; elsewhere the default policy stays.
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        # uvloop, as the servers under test use, when it is installed: its
        # callbacks cost the generator less CPU per received event.
        try:
            import uvloop
        except ImportError:
            loop_factory = None
        else:
            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_subscriber_process(target, channels, control, results))
    finally:
        results.close()


class SubscriberGroup:
    """Subscribers spread over forked processes; ``connect``, then ``wait_for`` or ``stop``."""

    def __init__(self, target: Target, channels: list[str], processes: int) -> None:
        self._context = multiprocessing.get_context("fork")
        self._procs: list[tuple[Any, Any, Any]] = []
        for index in range(processes):
            share = channels[index::processes]
            if not share:
                continue
            control_parent, control_child = self._context.Pipe()
            results_parent, results_child = self._context.Pipe(duplex=False)
            process = self._context.Process(target=_subscriber_main, args=(target, share, control_child, results_child))
            self._procs.append((process, control_parent, results_parent))

    def connect(self, timeout_s: float = 90) -> int:
        """Start the processes and return how many subscribers got a 200 and stay connected."""
        for process, _, _ in self._procs:
            process.start()
        connected = 0
        deadline = time.monotonic() + timeout_s
        for _, control, _ in self._procs:
            if not control.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("subscribers did not report within the connect timeout")
            connected += control.recv()[1]
        return connected

    def finish(
        self, expected: int | None, until_perf: float, timeout_s: float = 120, *, keep_open: bool = False
    ) -> list[dict[str, Any]]:
        """Collect the results: wait for ``expected`` markers each (or ``until_perf``), or stop now when None.

        With ``keep_open`` the subscribers stay connected until ``close``;
        otherwise this closes them and waits for the processes.
        """
        for _, control, _ in self._procs:
            control.send(("stop",) if expected is None else ("until", expected, until_perf, keep_open))
        results = []
        deadline = time.monotonic() + timeout_s
        for _, _, conn in self._procs:
            if conn.poll(max(0.0, deadline - time.monotonic())):
                results.append(conn.recv())
        if not keep_open:
            self.close()
        return results

    def close(self) -> None:
        """Tell the processes to close their connections, then wait for them to exit."""
        for process, control, _ in self._procs:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(OSError):
                    control.send(("close",))
        for process, _, _ in self._procs:
            if process.pid is None:
                continue
            process.join(10)
            if process.exitcode is None:
                process.kill()
                process.join(5)


@contextlib.asynccontextmanager
async def http_connection(host: str, port: int) -> Any:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _CONNECT_TIMEOUT_S)
    try:
        yield reader, writer
    finally:
        writer.close()
