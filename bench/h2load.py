"""Drive PublishStream calls and HTTP publishes with h2load, nghttp2's load generator written in C.

The Python load generator (grpc.aio) spends CPU on every message, and on a
small machine it competes with the server for the same cores. h2load sends
each call's request body from a file without per-message work, so nearly all
the CPU left goes to the server.

One h2load request is one PublishStream call. Its body is ``messages_per_call``
gRPC-framed PublishRequests (a 5-byte prefix each: flag 0, then the length as
a big-endian uint32). h2load sends the same body in every call, so the same
message_ids repeat across calls. A server that deduplicates message_ids would
then store each message only once: run it with deduplication off.

NOTE: h2load checks only the HTTP status, not the grpc-status trailer, so a
call that ends with a gRPC error still counts as succeeded here. Callers that
can, check what the server stored.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.procs import HOST, RedisServer, apt_install

__all__ = ["H2loadResult", "ensure_h2load_installed", "grpc_frames", "run_http_load", "run_stream_load", "stored_entries"]

MESSAGES_PER_CALL = 200


@dataclass(frozen=True)
class H2loadResult:
    calls: int
    """PublishStream calls that h2load counts as succeeded: complete, with HTTP status 200."""
    messages: int
    """``calls`` times the messages in each call's body."""
    seconds: float
    """h2load's measured time for the calls."""


def ensure_h2load_installed() -> bool:
    """Install Debian's nghttp2-client with apt-get when h2load is missing; return whether it is there."""
    if shutil.which("h2load"):
        return True
    apt_install(["nghttp2-client"], "the h2load rows are")
    return bool(shutil.which("h2load"))


def grpc_frames(messages: list[bytes]) -> bytes:
    """Return ``messages`` as one gRPC request body: each prefixed with flag 0 and its big-endian uint32 length."""
    return b"".join(b"\x00" + len(message).to_bytes(4, "big") + message for message in messages)


def run_stream_load(
    port: int,
    path: str,
    channels: list[str],
    *,
    seconds: float,
    streams: int,
    token: str = "",
    messages_per_call: int = MESSAGES_PER_CALL,
) -> H2loadResult:
    """Run PublishStream calls on ``path`` for ``seconds``, ``streams`` at a time.

    One h2load process per connection (two, or one for a single stream)
    runs ``streams`` divided among them. Each process publishes to its own
    channel of ``channels``, as each call of the Python load generator does,
    so the server can append a call's messages in runs. Messages of calls
    still open when the time ends are not counted.
    """
    from bench.loadgen import conduit_body

    processes = 2 if streams >= 2 else 1
    headers = ["content-type: application/grpc", "te: trailers"]
    if token:
        headers.append(f"authorization: Bearer {token}")
    with tempfile.TemporaryDirectory(prefix="h2load-") as directory:
        running = []
        for number in range(processes):
            channel = channels[number % len(channels)]
            body_path = Path(directory) / f"body-{number}.bin"
            body_path.write_bytes(grpc_frames([conduit_body(channel, index) for index in range(messages_per_call)]))
            command = [
                "h2load", "-c", "1", "-m", str(max(1, streams // processes)),
                "-D", f"{seconds:g}", "-d", str(body_path),
                *(part for header in headers for part in ("-H", header)),
                f"http://{HOST}:{port}{path}",
            ]
            running.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return _collect(running, seconds, messages_per_call)


def run_http_load(
    port: int, paths: list[str], body: bytes, *, seconds: float, connections: int, headers: list[str]
) -> H2loadResult:
    """POST ``body`` over HTTP/1.1 keep-alive connections for ``seconds``, one request in flight on each.

    h2load sends the requests to ``paths`` in turn. Only 2xx responses count.
    """
    with tempfile.TemporaryDirectory(prefix="h2load-") as directory:
        body_path = Path(directory) / "body.bin"
        body_path.write_bytes(body)
        command = [
            "h2load", "--h1", "-c", str(connections), "-m", "1", "-D", f"{seconds:g}", "-d", str(body_path),
            *(part for header in headers for part in ("-H", header)),
            *(f"http://{HOST}:{port}{path}" for path in paths),
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return _collect([process], seconds, 1)


def _collect(running: list[subprocess.Popen[str]], seconds: float, messages_per_call: int) -> H2loadResult:
    results = []
    try:
        for process in running:
            output, errors = process.communicate(timeout=seconds + 60)
            if process.returncode != 0:
                raise RuntimeError(f"h2load exited with status {process.returncode}:\n{errors[-2000:]}")
            results.append(_parse(output, messages_per_call))
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return H2loadResult(
        calls=sum(result.calls for result in results),
        messages=sum(result.messages for result in results),
        seconds=max(result.seconds for result in results),
    )


def stored_entries(redis: RedisServer, channels: list[str], *, org_id: int) -> int:
    """Return the entries ever added to the streams of ``channels``, trimmed ones included (Redis 7.0 or later)."""
    from broker.keys import stream_key

    total = 0
    for channel in channels:
        fields = redis.cli("XINFO", "STREAM", stream_key(org_id, channel)).splitlines()
        if "entries-added" in fields:
            total += int(fields[fields.index("entries-added") + 1])
    return total


def _parse(output: str, messages_per_call: int) -> H2loadResult:
    finished = re.search(r"finished in ([\d.]+)(m?s)", output)
    succeeded = re.search(r"requests: .* (\d+) succeeded", output)
    statuses = re.search(r"status codes: (\d+) 2xx", output)
    if not finished or not succeeded or not statuses:
        raise RuntimeError(f"h2load output has no 'finished in', 'requests' or 'status codes' line:\n{output}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    # "succeeded" counts complete responses, and "2xx" counts by status
    # including responses still open at the end. The smaller bounds the
    # complete 2xx responses from above.
    calls = min(int(succeeded.group(1)), int(statuses.group(1)))
    return H2loadResult(calls=calls, messages=calls * messages_per_call, seconds=seconds)
