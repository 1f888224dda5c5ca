"""The ``conduit`` command: run a role, run dev mode, mint tokens, send and tail messages.

Exit status: 0 on success (a role stopped by SIGTERM or SIGINT included),
1 when a request was rejected or a server failed to start, 2 for a usage or
configuration error, 130 when a client command is interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from conduit import __version__
from conduit.dev_keys import DEFAULT_STATE_DIR
from conduit.errors import ConfigError
from conduit.ids import UINT64_DIGITS, UINT64_MAX, describe_value
from conduit.sdk import DEFAULT_DEMO_TEXT, PHASES

__all__ = ["ROLE_VARIABLES", "build_parser", "main"]


# Environment variable -> (flag, metavar, help). A flag wins over its variable.
_VARIABLES: dict[str, tuple[str, str, str]] = {
    "REDIS_URL": ("--redis-url", "URL", "Redis URL: redis://, rediss:// or unix://"),
    "REDIS_CLUSTER": ("--redis-cluster", "0|1", "1 when REDIS_URL points at a Redis Cluster (default 0)"),
    "CONDUIT_HOST": ("--host", "ADDRESS", "bind address (default 0.0.0.0; 127.0.0.1 for dev)"),
    "PUBLISH_PORT": ("--publish-port", "PORT", "HTTP shim port; 0 picks a free port (default 8081)"),
    "PUBLISH_GRPC_PORT": ("--publish-grpc-port", "PORT", "gRPC port; 0 picks a free port (default 50051)"),
    "GATEWAY_PORT": ("--gateway-port", "PORT", "SSE gateway port; 0 picks a free port (default 8080)"),
    "PUBLISH_JWT_SECRET": ("--publish-jwt-secret", "SECRET", "HS256 secret of publisher tokens; prefer the variable, since flags show in ps"),
    "PUBLISH_JWT_ISSUER": ("--publish-jwt-issuer", "ISSUER", "required iss claim of publisher tokens"),
    "PUBLISH_JWT_AUDIENCE": ("--publish-jwt-audience", "AUDIENCE", "required aud claim of publisher tokens"),
    "GATEWAY_JWT_PUBLIC_KEY": ("--gateway-jwt-public-key", "PEM|@PATH", "RS256 public key of subscriber tokens: PEM text or @file"),
    "GATEWAY_JWT_ISSUER": ("--gateway-jwt-issuer", "ISSUER", "required iss claim of subscriber tokens"),
    "GATEWAY_JWT_AUDIENCE": ("--gateway-jwt-audience", "AUDIENCE", "required aud claim of subscriber tokens"),
    "MAX_MESSAGE_BYTES": ("--max-message-bytes", "BYTES", "largest accepted encoded PublishRequest (default 16384)"),
    "MAX_STREAM_LEN": ("--max-stream-len", "ENTRIES", "approximate entries kept per stream (default 1200)"),
    "PUBLISH_RATE_LIMIT": ("--publish-rate-limit", "COUNT", "publishes allowed per channel per window (default 20)"),
    "PUBLISH_RATE_WINDOW_SEC": ("--publish-rate-window-sec", "SECONDS", "rate-limit window (default 1)"),
    "STREAM_TTL_SEC": ("--stream-ttl-sec", "SECONDS", "lifetime of a stream after its END (default 120)"),
    "PUBLISH_DEDUP_WINDOW_SEC": ("--publish-dedup-window-sec", "SECONDS", "how long a retried message_id returns its first stream id; 0 disables (default 300)"),
    "GATEWAY_MAX_CONNECTIONS_PER_IP": ("--gateway-max-connections-per-ip", "COUNT", "concurrent SSE streams per client address; 0 is unlimited (default 0)"),
    "GATEWAY_MAX_CONNECTIONS_PER_TOKEN": ("--gateway-max-connections-per-token", "COUNT", "concurrent SSE streams per token; 0 is unlimited (default 0)"),
    "CLEANUP_INTERVAL_SEC": ("--cleanup-interval-sec", "SECONDS", "period of the cleanup sweep (default 120)"),
    "CLEANUP_STREAM_IDLE_SEC": ("--cleanup-stream-idle-sec", "SECONDS", "idle time after which an unfinished stream is deleted (default 120)"),
    "LOG_FORMAT": ("--log-format", "text|json", "log line format on stderr (default text)"),
}

# Read here rather than in Settings, because only the parent process of `serve` uses them.
_WORKER_VARIABLES = {"publish": "PUBLISH_WORKERS", "gateway": "GATEWAY_WORKERS"}
_MAX_WORKERS = 256

_BROKER = ("REDIS_URL", "REDIS_CLUSTER")
_LIMITS = (
    "MAX_MESSAGE_BYTES", "MAX_STREAM_LEN", "PUBLISH_RATE_LIMIT", "PUBLISH_RATE_WINDOW_SEC", "STREAM_TTL_SEC",
    "PUBLISH_DEDUP_WINDOW_SEC",
)
_GATEWAY_LIMITS = ("GATEWAY_MAX_CONNECTIONS_PER_IP", "GATEWAY_MAX_CONNECTIONS_PER_TOKEN")
_CLEANUP = ("CLEANUP_INTERVAL_SEC", "CLEANUP_STREAM_IDLE_SEC")

ROLE_VARIABLES: dict[str, tuple[str, ...]] = {
    "publish": (
        *_BROKER, "CONDUIT_HOST", "PUBLISH_PORT", "PUBLISH_GRPC_PORT",
        "PUBLISH_JWT_SECRET", "PUBLISH_JWT_ISSUER", "PUBLISH_JWT_AUDIENCE", *_LIMITS, "LOG_FORMAT",
    ),
    "gateway": (
        *_BROKER, "CONDUIT_HOST", "GATEWAY_PORT",
        "GATEWAY_JWT_PUBLIC_KEY", "GATEWAY_JWT_ISSUER", "GATEWAY_JWT_AUDIENCE", "MAX_STREAM_LEN",
        *_GATEWAY_LIMITS, "LOG_FORMAT",
    ),
    "cleanup": (*_BROKER, *_CLEANUP, "LOG_FORMAT"),
    # Dev mode signs and checks tokens with its own keys, so it takes no JWT settings.
    "dev": (
        *_BROKER, "CONDUIT_HOST", "PUBLISH_PORT", "PUBLISH_GRPC_PORT", "GATEWAY_PORT",
        *_LIMITS, *_GATEWAY_LIMITS, *_CLEANUP, "LOG_FORMAT",
    ),
}
"""Environment variables each role reads; each gets its ``--flag``."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``conduit`` command with ``argv`` (default: the process arguments) and return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        # argparse exits after --help, --version and usage errors; callers get the status instead.
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"conduit {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conduit", description="Conduit: real-time delivery of message streams to browsers over SSE."
    )
    parser.add_argument("--version", action="version", version=f"conduit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one role: publish, gateway or cleanup")
    roles = serve.add_subparsers(dest="role", required=True, metavar="ROLE")
    role_help = {
        "publish": "gRPC PublishService and the HTTP shim POST /publish/{org_id}/{channel_id}",
        "gateway": "SSE gateway: GET /events/{org_id}",
        "cleanup": "delete streams that went idle without an END",
    }
    for role, help_text in role_help.items():
        role_parser = roles.add_parser(role, help=help_text, description=help_text)
        _add_variable_flags(role_parser, role)
        if role in _WORKER_VARIABLES:
            _add_workers_flag(role_parser, role)
        role_parser.set_defaults(handler=_serve)

    dev = commands.add_parser(
        "dev",
        help="run all three roles in one process with dev keys and a demo page",
        description="Run publish, gateway and cleanup in one process on the embedded broker "
        "(or on REDIS_URL when set), with generated dev keys, dev-only routes and a demo page.",
    )
    _add_state_dir(dev)
    _add_variable_flags(dev, "dev")
    dev.set_defaults(handler=_dev)

    _add_token_parser(commands)
    _add_send_parser(commands)
    _add_tail_parser(commands)
    return parser


def _add_variable_flags(parser: argparse.ArgumentParser, role: str) -> None:
    group = parser.add_argument_group("settings", "each flag sets the environment variable in brackets and wins over it")
    for name in ROLE_VARIABLES[role]:
        flag, metavar, help_text = _VARIABLES[name]
        group.add_argument(flag, dest=name, metavar=metavar, default=None, help=f"{help_text} [{name}]")


def _add_workers_flag(parser: argparse.ArgumentParser, role: str) -> None:
    variable = _WORKER_VARIABLES[role]
    parser.add_argument(
        "--workers",
        dest="workers",
        metavar="N",
        default=None,
        help=f"worker processes sharing the port(s) through SO_REUSEPORT (default 1) [{variable}]",
    )


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"folder of the dev keys (default ./{DEFAULT_STATE_DIR})",
    )


def _add_ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org-id", type=_org_id, required=True, metavar="N", help="organization id, a non-negative integer")
    parser.add_argument("--channel-id", type=_uuid, required=True, metavar="UUID", help="channel UUID")


def _add_token_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser(
        "token",
        help="mint a publisher or subscriber token",
        description="Mint a token from PUBLISH_JWT_SECRET/ISSUER/AUDIENCE (publish) or "
        "GATEWAY_JWT_PRIVATE_KEY/ISSUER/AUDIENCE (subscribe) when set, else from the dev keys. "
        "Prints the token only.",
    )
    kinds = token.add_subparsers(dest="kind", required=True, metavar="KIND")
    publish = kinds.add_parser("publish", help="HS256 token for the publish service")
    subscribe = kinds.add_parser("subscribe", help="RS256 token for one channel at the gateway")
    _add_ids(subscribe)
    for kind in (publish, subscribe):
        kind.add_argument("--ttl-s", type=_positive_int, default=3600, metavar="SECONDS", help="lifetime in seconds (default 3600)")
        _add_state_dir(kind)
        kind.set_defaults(handler=_token)


def _add_send_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser(
        "send",
        help="publish one message or a demo stream",
        description="Publish one message, or a whole START/DELTA.../END demo stream, and print each stream id.",
    )
    _add_ids(send)
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--phase", choices=sorted(PHASES), help="publish one message with this phase")
    what.add_argument(
        "--demo",
        nargs="?",
        const=DEFAULT_DEMO_TEXT,
        metavar="TEXT",
        help="publish START, one DELTA {\"value\": word} per word of TEXT, then END",
    )
    send.add_argument("--payload", metavar="JSON", help="payload of the single message, a JSON object")
    send.add_argument("--sequence", type=_non_negative_int, default=0, metavar="N", help="sequence of the single message (default 0)")
    send.add_argument("--message-id", type=_uuid, metavar="UUID", help="message UUID of the single message (default: random)")
    send.add_argument("--grpc", action="store_true", help="publish over gRPC instead of the HTTP shim")
    send.add_argument(
        "--url",
        default=f"http://127.0.0.1:{_port_from_env('PUBLISH_PORT', 8081)}",
        metavar="URL",
        help="HTTP shim base URL (default %(default)s, from PUBLISH_PORT when set)",
    )
    send.add_argument(
        "--grpc-target",
        default=f"127.0.0.1:{_port_from_env('PUBLISH_GRPC_PORT', 50051)}",
        metavar="HOST:PORT",
        help="gRPC HOST:PORT (default %(default)s, from PUBLISH_GRPC_PORT when set)",
    )
    send.add_argument("--token", metavar="JWT", help="publisher token (default: minted from the configured or dev keys)")
    send.add_argument(
        "--interval-ms", type=_non_negative_int, default=100, metavar="MS", help="pause between demo messages (default 100)"
    )
    _add_state_dir(send)
    send.set_defaults(handler=_send)


def _add_tail_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = commands.add_parser(
        "tail",
        help="print a channel's events as they arrive",
        description="Print each event of a channel as '<id> <event> <data>' until END, "
        "reconnecting with Last-Event-ID when the connection drops.",
    )
    _add_ids(tail)
    tail.add_argument(
        "--url",
        default=f"http://127.0.0.1:{_port_from_env('GATEWAY_PORT', 8080)}",
        metavar="URL",
        help="gateway base URL (default %(default)s, from GATEWAY_PORT when set)",
    )
    tail.add_argument("--token", metavar="JWT", help="subscriber token (default: minted from the configured or dev keys)")
    tail.add_argument("--last-event-id", metavar="ID", help="resume after this entry id")
    tail.add_argument(
        "--max-reconnects", type=_non_negative_int, default=5, metavar="N", help="reconnects in a row without progress (default 5)"
    )
    tail.add_argument(
        "--timeout-s",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="exit with status 1 when END has not arrived within SECONDS (default: no limit, so a channel "
        "that never ends, or whose stream has already expired, is watched until interrupted)",
    )
    _add_state_dir(tail)
    tail.set_defaults(handler=_tail)


def _serve(args: argparse.Namespace) -> int:
    from conduit.logs import configure_logging
    from conduit.serve import serve
    from conduit.settings import load_settings

    settings = load_settings(args.role, overrides=_overrides(args, args.role))
    workers = _worker_count(args)
    configure_logging(settings.log_format)
    if workers == 1:
        return _run_until_stopped(lambda stopping: serve(args.role, settings, stopping), f"serve {args.role}")

    from conduit.workers import run_workers, share_ports

    try:
        shared_settings, held_sockets = share_ports(args.role, settings)
    except OSError as error:
        print(f"conduit serve {args.role}: cannot start: {error}", file=sys.stderr)
        return 1
    try:
        return run_workers(
            args.role,
            workers,
            lambda: _run_until_stopped(lambda stopping: serve(args.role, shared_settings, stopping), f"serve {args.role}"),
        )
    finally:
        for sock in held_sockets:
            sock.close()


def _worker_count(args: argparse.Namespace) -> int:
    """Return the number of worker processes from --workers or its variable; 1 for cleanup."""
    variable = _WORKER_VARIABLES.get(args.role)
    if variable is None:
        return 1
    raw = args.workers if args.workers is not None else os.environ.get(variable)
    if raw is None or raw.strip() == "":
        return 1
    if not raw.strip().isdigit() or not 1 <= int(raw) <= _MAX_WORKERS:
        raise ConfigError(f"{variable} must be an integer from 1 to {_MAX_WORKERS}, got {raw!r}")
    return int(raw)


def _dev(args: argparse.Namespace) -> int:
    from conduit.dev import dev_settings, run_dev
    from conduit.dev_keys import load_or_create_dev_keys
    from conduit.logs import configure_logging

    keys = load_or_create_dev_keys(args.state_dir)
    settings = dev_settings(keys, _overrides(args, "dev"))
    configure_logging(settings.log_format)
    return _run_until_stopped(lambda stopping: run_dev(settings, keys, args.state_dir, stopping), "dev")


def _token(args: argparse.Namespace) -> int:
    from conduit.cli_tools import publisher_token, subscriber_token

    if args.kind == "publish":
        token = publisher_token(os.environ, args.state_dir, args.ttl_s)
    else:
        token = subscriber_token(os.environ, args.state_dir, args.org_id, args.channel_id, args.ttl_s)
    print(token)
    return 0


def _send(args: argparse.Namespace) -> int:
    from conduit.cli_tools import run_send

    if args.demo is not None and (args.payload is not None or args.message_id is not None):
        raise ConfigError("--payload and --message-id apply to a single message, not to --demo")
    if args.demo is not None and not args.demo.strip():
        raise ConfigError("--demo TEXT must not be empty")
    return asyncio.run(run_send(args))


def _tail(args: argparse.Namespace) -> int:
    from conduit.cli_tools import run_tail

    return asyncio.run(run_tail(args))


def _run_until_stopped(start: Callable[[asyncio.Event], Awaitable[None]], name: str) -> int:
    from conduit.serve import stop_on_signals

    async def run() -> None:
        stopping = asyncio.Event()
        with stop_on_signals(stopping):
            await start(stopping)

    try:
        with asyncio.Runner(loop_factory=_fastest_loop_factory()) as runner:
            runner.run(run())
    except OSError as error:
        # A port in use or an address that cannot be bound: one line, no traceback.
        print(f"conduit {name}: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


def _fastest_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop factory when uvloop is installed, else None for asyncio's default loop.

    uvloop serves the same publish load with less CPU; see docs/benchmarks.md.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _overrides(args: argparse.Namespace, role: str) -> dict[str, str | None]:
    return {name: getattr(args, name) for name in ROLE_VARIABLES[role]}


def _org_id(raw: str) -> int:
    # str.isdigit() would also accept other scripts' digits and numbers too long for int().
    if UINT64_DIGITS.fullmatch(raw) is None or int(raw) > UINT64_MAX:
        raise argparse.ArgumentTypeError(f"must be a non-negative 64-bit integer, got {describe_value(raw)}")
    return int(raw)


def _uuid(raw: str) -> str:
    try:
        value = uuid.UUID(raw)
    except ValueError:
        value = None
    if value is None or str(value) != raw.lower():
        raise argparse.ArgumentTypeError(f"must be a UUID such as 97f58c19-ce38-4c6b-8a5b-47f3405691f0, got {describe_value(raw)}")
    return str(value)


def _port_from_env(name: str, default: int) -> int:
    """Return the port in environment variable ``name`` when it is a decimal number, else ``default``.

    ``send`` and ``tail`` reach the local servers on the ports that the same
    variables give ``serve`` and ``dev``. A malformed value is left for
    ``serve`` to report.
    """
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() and 0 < int(raw) < 65536 else default


def _non_negative_int(raw: str) -> int:
    if UINT64_DIGITS.fullmatch(raw) is None:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {describe_value(raw)}")
    return int(raw)


def _positive_int(raw: str) -> int:
    if UINT64_DIGITS.fullmatch(raw) is None or int(raw) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {describe_value(raw)}")
    return int(raw)


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {raw!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
