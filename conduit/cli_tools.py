"""The tools for people: ``conduit token``, ``conduit send`` and ``conduit tail``.

Tokens come from the configured keys when their variables are set
(PUBLISH_JWT_SECRET/ISSUER/AUDIENCE for publishers, GATEWAY_JWT_PRIVATE_KEY/
ISSUER/AUDIENCE for subscribers), and from the dev keys in the state folder
otherwise, so that against ``conduit dev`` no token flags are needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from conduit.sdk import (
    PHASES,
    GrpcPublisher,
    HttpPublisher,
    Publisher,
    PublishRejected,
    PublishUnreachable,
    Subscriber,
    SubscribeFailed,
    build_request,
    demo_requests,
    parse_payload,
)
from conduit.dev_keys import load_dev_keys
from conduit.errors import ConfigError
from conduit.settings import pem_path_hint, read_pem
from conduit.tokens import mint_publisher_token, mint_subscriber_token, short_secret_message
from conduit.v1alpha import publish_pb2

__all__ = ["publisher_token", "run_send", "run_tail", "subscriber_token"]


def publisher_token(environ: Mapping[str, str], state_dir: Path, ttl_s: int) -> str:
    """Mint a publisher token from PUBLISH_JWT_* when PUBLISH_JWT_SECRET is set, else from the dev keys."""
    secret = _get(environ, "PUBLISH_JWT_SECRET")
    if secret is None:
        _reject_partial_keys(environ, "PUBLISH_JWT_SECRET", ("PUBLISH_JWT_ISSUER", "PUBLISH_JWT_AUDIENCE"))
        return load_dev_keys(state_dir).publisher_token(ttl_s=ttl_s)
    message = short_secret_message(secret)
    if message is not None:
        print(f"warning: {message}", file=sys.stderr)
    issuer, audience = _required(environ, "PUBLISH_JWT_ISSUER", "PUBLISH_JWT_AUDIENCE")
    return mint_publisher_token(secret, issuer=issuer, audience=audience, ttl_s=ttl_s)


def subscriber_token(environ: Mapping[str, str], state_dir: Path, org_id: int, channel_id: str, ttl_s: int) -> str:
    """Mint a subscriber token from GATEWAY_JWT_PRIVATE_KEY and GATEWAY_JWT_* when set, else from the dev keys."""
    raw_key = _get(environ, "GATEWAY_JWT_PRIVATE_KEY")
    if raw_key is None:
        _reject_partial_keys(environ, "GATEWAY_JWT_PRIVATE_KEY", ("GATEWAY_JWT_ISSUER", "GATEWAY_JWT_AUDIENCE"))
        return load_dev_keys(state_dir).subscriber_token(org_id, channel_id, ttl_s=ttl_s)
    pem = read_pem(raw_key, "GATEWAY_JWT_PRIVATE_KEY")
    try:
        load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ConfigError(
            f"GATEWAY_JWT_PRIVATE_KEY is not an unencrypted PEM-encoded RSA private key{pem_path_hint(raw_key)}"
        ) from None
    issuer, audience = _required(environ, "GATEWAY_JWT_ISSUER", "GATEWAY_JWT_AUDIENCE")
    return mint_subscriber_token(
        pem,
        issuer=issuer,
        audience=audience,
        org_id=org_id,
        channel_id=channel_id,
        ttl_s=ttl_s,
    )


async def run_send(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Publish one message or a demo stream and print each stream id; return the exit status."""
    token = args.token or publisher_token(os.environ, args.state_dir, ttl_s=300)
    if args.demo is not None:
        requests = demo_requests(args.org_id, args.channel_id, args.demo)
    else:
        try:
            payload = parse_payload(args.payload) if args.payload is not None else None
        except ValueError as error:
            raise ConfigError(f"--payload {error}") from None
        requests = [
            build_request(
                org_id=args.org_id,
                channel_id=args.channel_id,
                phase=PHASES[args.phase],
                sequence=args.sequence,
                payload=payload,
                message_id=args.message_id,
            )
        ]

    publisher: Publisher
    if args.grpc:
        publisher = GrpcPublisher(args.grpc_target, token, org_id=args.org_id)
    else:
        publisher = HttpPublisher(args.url, token, org_id=args.org_id)
    try:
        async with publisher:
            await _publish_all(publisher, requests, args.interval_ms / 1000, out)
    except PublishRejected as error:
        print(f"conduit send: {error}", file=sys.stderr)
        return 1
    except PublishUnreachable as error:
        where = args.grpc_target if args.grpc else args.url
        print(f"conduit send: cannot reach {where}: {error.message}", file=sys.stderr)
        return 1
    return 0


async def _publish_all(
    publisher: Publisher, requests: list[publish_pb2.PublishRequest], interval_s: float, out: TextIO
) -> None:
    if len(requests) == 1:
        print(await publisher.publish(requests[0]), file=out, flush=True)
        return
    async with contextlib.aclosing(publisher.publish_many(requests, interval_s=interval_s)) as stream_ids:
        async for stream_id in stream_ids:
            print(stream_id, file=out, flush=True)


async def run_tail(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Print a channel's events, one line each (``<id> <event> <data>``), until END; return the exit status."""
    token = args.token or subscriber_token(os.environ, args.state_dir, args.org_id, args.channel_id, ttl_s=3600)
    subscriber = Subscriber(
        args.url,
        token,
        org_id=args.org_id,
        channel_id=args.channel_id,
        last_event_id=args.last_event_id,
        max_reconnects=args.max_reconnects,
    )
    try:
        async with asyncio.timeout(args.timeout_s), subscriber:
            async with contextlib.aclosing(subscriber.raw_events()) as events:
                async for event in events:
                    print(f"{event.id or '-'} {event.event} {event.data}", file=out, flush=True)
    except SubscribeFailed as error:
        print(f"conduit tail: {error}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"conduit tail: no END event within --timeout-s {args.timeout_s:g}", file=sys.stderr)
        return 1
    return 0


def _reject_partial_keys(environ: Mapping[str, str], key_name: str, claim_names: tuple[str, ...]) -> None:
    """Raise ConfigError when a claim variable is set without its key.

    A token minted from the dev keys then would carry the dev issuer and be
    rejected by a server with the configured keys, as an invalid signature.
    """
    present = [name for name in claim_names if _get(environ, name) is not None]
    if present:
        raise ConfigError(
            f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} set but {key_name} is not: set {key_name} too, "
            "or unset them to mint from the dev keys"
        )


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _required(environ: Mapping[str, str], *names: str) -> list[str]:
    """Return the values of ``names``; raise ConfigError naming every one that is missing."""
    missing = [name for name in names if _get(environ, name) is None]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required but not set")
    return [environ[name].strip() for name in names]
