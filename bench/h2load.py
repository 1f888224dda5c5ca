"""Drive gRPC PublishStream calls with h2load, nghttp2's load generator written in C.

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

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from bench.procs import HOST

__all__ = ["H2loadResult", "ensure_h2load_installed", "grpc_frames", "run_stream_load"]

MESSAGES_PER_CALL = 200


@dataclass(frozen=True)
class H2loadResult:
    calls: int
    """PublishStream calls that ended with HTTP status 200."""
    messages: int
    """``calls`` times the messages in each call's body."""
    seconds: float
    """h2load's measured time for the calls."""


def ensure_h2load_installed() -> bool:
    """Install Debian's nghttp2-client with apt-get when h2load is missing; return whether it is there."""
    if shutil.which("h2load"):
        return True
    command = ["apt-get", "install", "-y", "-q", "nghttp2-client"]
    if os.geteuid() != 0:
        command.insert(0, "sudo")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing nghttp2-client (h2load) with apt-get", file=sys.stderr, flush=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        print(f"apt-get failed ({result.returncode}); the h2load rows are skipped:\n{result.stderr[-2000:]}", file=sys.stderr)
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
    """Run PublishStream calls on ``path`` for ``seconds``, ``streams`` at a time over 2 connections.

    Each call publishes ``messages_per_call`` messages, spread over ``channels``
    in turn. Messages of calls that are still open when the time ends are not
    counted.
    """
    from bench.loadgen import conduit_body

    body = grpc_frames([conduit_body(channels[i % len(channels)], i) for i in range(messages_per_call)])
    connections = 2 if streams >= 2 else 1
    headers = ["content-type: application/grpc", "te: trailers"]
    if token:
        headers.append(f"authorization: Bearer {token}")
    with tempfile.NamedTemporaryFile(prefix="h2load-body-", suffix=".bin") as body_file:
        body_file.write(body)
        body_file.flush()
        command = [
            "h2load", "-c", str(connections), "-m", str(max(1, streams // connections)),
            "-D", f"{seconds:g}", "-d", body_file.name,
            *(part for header in headers for part in ("-H", header)),
            f"http://{HOST}:{port}{path}",
        ]
        output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return _parse(output, messages_per_call)


def _parse(output: str, messages_per_call: int) -> H2loadResult:
    finished = re.search(r"finished in ([\d.]+)(m?s)", output)
    statuses = re.search(r"status codes: (\d+) 2xx", output)
    if not finished or not statuses:
        raise RuntimeError(f"h2load output has no 'finished in' or 'status codes' line:\n{output}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    calls = int(statuses.group(1))
    return H2loadResult(calls=calls, messages=calls * messages_per_call, seconds=seconds)
