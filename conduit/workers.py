"""Run one role in several worker processes that share its ports, and supervise them.

Each worker is a forked copy of the parent that runs the role on its own event
loop and broker, with its sockets bound with SO_REUSEPORT, so the kernel
spreads new connections across the workers. The parent serves nothing: it
forwards SIGTERM and SIGINT to the workers, waits a bounded time for them to
drain and exit, and exits 0 when all of them exited 0. When one worker stops on
its own, the parent stops the others and exits 1.

The parent resolves a port of 0 once and keeps a bound, not listening socket
on it while the workers run. So all workers get the same port, and no other
program takes it between their binds. The parent binds each fixed port once
without SO_REUSEPORT before forking. With SO_REUSEPORT alone, the workers
would join the listeners of another `serve --workers` of the same user on
that port instead of failing.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

from conduit.http_server import bind_error, enable_port_sharing
from conduit.settings import PORT_SETTINGS, Settings

__all__ = ["WORKER_STOP_TIMEOUT_S", "run_workers", "share_ports"]

logger = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 15.0
"""How long the parent waits for the workers after forwarding a stop signal.

It exceeds the servers' own grace period, so a worker that drains in time
is never killed. Workers still running after it get SIGKILL."""

_POLL_INTERVAL_S = 0.5
_PORT_FIELDS = {
    "publish": ("publish_port", "publish_grpc_port"),
    "gateway": ("gateway_port",),
}


def share_ports(role: str, settings: Settings) -> tuple[Settings, list[socket.socket]]:
    """Replace each port 0 of ``role`` with a free port and return the sockets that hold them.

    Raise OSError naming the port and its setting when a fixed port is in use,
    or when two settings of ``role`` name the same fixed port. The caller
    closes the sockets once the workers have exited.
    """
    _check_ports_distinct(role, settings)
    reserved: list[socket.socket] = []
    changes: dict[str, int] = {}
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        for field in _PORT_FIELDS[role]:
            if getattr(settings, field) != 0:
                _check_port_free(role, settings.host, getattr(settings, field), family, PORT_SETTINGS[field])
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((settings.host, 0))
            except OSError as error:
                raise OSError(f"cannot reserve a port on {settings.host}: {error.strerror}") from error
            changes[field] = sock.getsockname()[1]
    except OSError:
        for sock in reserved:
            sock.close()
        raise
    return dataclasses.replace(settings, **changes), reserved


def _check_ports_distinct(role: str, settings: Settings) -> None:
    """Raise OSError when two port settings of ``role`` name the same fixed port.

    With SO_REUSEPORT the HTTP and gRPC listeners of a worker both bind such a
    port, so start-up succeeds while the kernel hands every connection to one
    of them.
    """
    fields_by_port: dict[int, list[str]] = {}
    for field in _PORT_FIELDS[role]:
        port = getattr(settings, field)
        if port != 0:
            fields_by_port.setdefault(port, []).append(field)
    for port, fields in fields_by_port.items():
        if len(fields) > 1:
            settings_named = " and ".join(PORT_SETTINGS[field] for field in fields)
            raise OSError(f"{role}: {len(fields)} listeners are set to port {port}: choose different ports with {settings_named}")


def _check_port_free(role: str, host: str, port: int, family: socket.AddressFamily, setting: str) -> None:
    """Bind ``host:port`` once without SO_REUSEPORT and release it; raise OSError when it is in use."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as the listeners set it, so that connections in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise bind_error(role, host, port, error, setting) from error


def run_workers(
    role: str,
    count: int,
    run_worker: Callable[[], int],
    *,
    stop_timeout_s: float = WORKER_STOP_TIMEOUT_S,
) -> int:
    """Fork ``count`` workers that each return ``run_worker()`` as their exit status; supervise them.

    Must be called before this process starts an event loop or a thread,
    because the workers are forked. Returns 0 when every worker exited 0
    after a stop signal, 1 otherwise.
    """
    context = multiprocessing.get_context("fork")
    parent_pid = os.getpid()
    stop_requested: list[int] = []
    workers: list[multiprocessing.process.BaseProcess] = []

    def on_signal(number: int, _frame: FrameType | None) -> None:
        if os.getpid() != parent_pid:
            # A worker forked before it installed its own handlers.
            raise SystemExit(0)
        stop_requested.append(number)
        _signal_all(workers, signal.SIGTERM)

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            worker = context.Process(target=_worker_main, args=(run_worker,), name=f"{role}-worker-{index}")
            worker.start()
            workers.append(worker)
            logger.info("worker started", extra={"role": role, "worker": index, "pid": worker.pid})
        if stop_requested:
            _signal_all(workers, signal.SIGTERM)

        failed = _wait_for_stop_or_exit(workers, stop_requested)
        if failed is not None:
            # The sentinel closes while the worker exits, a moment before the
            # worker can be reaped. Joining first makes exitcode known for the log.
            failed.join(_POLL_INTERVAL_S)
            logger.error(
                "worker exited without a stop signal; stopping the others",
                extra={"role": role, "pid": failed.pid, "exit_status": failed.exitcode},
            )
            _signal_all(workers, signal.SIGTERM)
        _wait_all(workers, stop_timeout_s)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

    statuses = [worker.exitcode for worker in workers]
    logger.info("workers stopped", extra={"role": role, "exit_statuses": statuses})
    return 0 if failed is None and all(status == 0 for status in statuses) else 1


def _worker_main(run_worker: Callable[[], int]) -> None:
    # The role installs its own handlers on its event loop; until then a
    # stop signal ends the worker at once, since it serves nothing yet.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    enable_port_sharing()
    sys.exit(run_worker())


def _wait_for_stop_or_exit(
    workers: list[multiprocessing.process.BaseProcess], stop_requested: list[int]
) -> multiprocessing.process.BaseProcess | None:
    """Wait until a stop signal arrives (return None) or a worker exits first (return it)."""
    # A server runs until a stop signal arrives, so this wait has no deadline.
    # Each pass is bounded, and the loop sees a signal within one interval.
    while not stop_requested:
        ready = multiprocessing.connection.wait([worker.sentinel for worker in workers], _POLL_INTERVAL_S)
        if ready and not stop_requested:
            return next(worker for worker in workers if worker.sentinel in ready)
    return None


def _wait_all(workers: list[multiprocessing.process.BaseProcess], timeout_s: float) -> None:
    """Join every worker within ``timeout_s`` in total, then SIGKILL and reap the ones left."""
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.exitcode is None:
            logger.error("worker timed out while stopping; sending SIGKILL", extra={"pid": worker.pid})
            worker.kill()
            worker.join(5)


def _signal_all(workers: list[multiprocessing.process.BaseProcess], number: signal.Signals) -> None:
    for worker in workers:
        if worker.pid is not None and worker.exitcode is None:
            try:
                os.kill(worker.pid, number)
            except ProcessLookupError:
                pass
