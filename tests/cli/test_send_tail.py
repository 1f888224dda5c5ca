"""``conduit send`` and ``conduit tail`` against an in-process dev stack."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import pytest

from broker.keys import stream_key
from conduit.cli import build_parser, main
from conduit.cli_tools import run_send, run_tail
from conduit.sdk import split_demo_text
from conduit.dev import DevStack
from conduit.serve import create_server
from conduit.v1alpha import publish_pb2
from tests.redis_process import free_port

_TIMEOUT_S = 15


async def _send(stack: DevStack, state_dir: Path, channel_id: str, *extra: str) -> tuple[int, list[str]]:
    args = build_parser().parse_args([
        "send", "--org-id", "1", "--channel-id", channel_id, "--url", stack.publish_url,
        "--grpc-target", stack.grpc_target, "--state-dir", str(state_dir), "--interval-ms", "0", *extra,
    ])
    out = io.StringIO()
    status = await asyncio.wait_for(run_send(args, out), _TIMEOUT_S)
    return status, out.getvalue().splitlines()


async def _tail(gateway_url: str, state_dir: Path, channel_id: str, *extra: str) -> tuple[int, list[str]]:
    args = build_parser().parse_args([
        "tail", "--org-id", "1", "--channel-id", channel_id, "--url", gateway_url,
        "--state-dir", str(state_dir), "--timeout-s", str(_TIMEOUT_S), *extra,
    ])
    out = io.StringIO()
    status = await asyncio.wait_for(run_tail(args, out), _TIMEOUT_S + 5)
    return status, out.getvalue().splitlines()


def _parse_tail_line(line: str) -> tuple[str, str, dict[str, object]]:
    entry_id, event, data = line.split(" ", 2)
    return entry_id, event, json.loads(data)


@pytest.mark.parametrize("transport", [[], ["--grpc"]], ids=["http", "grpc"])
async def test_tail_prints_demo_stream(
    dev_stack: DevStack, state_dir: Path, channel_id: str, transport: list[str]
) -> None:
    tail = asyncio.create_task(_tail(dev_stack.gateway_url, state_dir, channel_id))

    send_status, stream_ids = await _send(dev_stack, state_dir, channel_id, "--demo", "hello, world!", *transport)
    tail_status, lines = await tail

    parsed = [_parse_tail_line(line) for line in lines]
    assert send_status == 0
    assert tail_status == 0
    assert len(stream_ids) == 4
    assert [entry_id for entry_id, _, _ in parsed] == stream_ids
    assert {event for _, event, _ in parsed} == {"stream"}
    assert [data["phase"] for _, _, data in parsed] == ["PHASE_START", "PHASE_DELTA", "PHASE_DELTA", "PHASE_END"]
    assert [data["payload"] for _, _, data in parsed] == [{}, {"value": "hello,"}, {"value": " world!"}, {}]


@pytest.mark.parametrize("transport", [[], ["--grpc"]], ids=["http", "grpc"])
async def test_send_single_message_is_stored(
    dev_stack: DevStack, state_dir: Path, channel_id: str, transport: list[str]
) -> None:
    message_id = "0b9a4f43-1d55-4f7e-9b0e-6a4f8e0c7d21"

    status, stream_ids = await _send(
        dev_stack, state_dir, channel_id, "--phase", "delta", "--sequence", "7",
        "--payload", '{"value": "hi", "n": 2}', "--message-id", message_id, *transport,
    )

    entries = await dev_stack.broker.read(stream_key(1, channel_id), "0-0", count=10, block_ms=0)
    request = publish_pb2.PublishRequest.FromString(entries[0].data)
    assert status == 0
    assert [entry.id for entry in entries] == stream_ids
    assert request.phase == publish_pb2.PHASE_DELTA
    assert request.sequence == 7
    assert request.message_id == message_id
    assert request.org_id == 1
    assert dict(request.payload) == {"value": "hi", "n": 2.0}


async def test_tail_resumes_after_last_event_id(dev_stack: DevStack, state_dir: Path, channel_id: str) -> None:
    _, stream_ids = await _send(dev_stack, state_dir, channel_id, "--demo", "one two three")

    status, lines = await _tail(dev_stack.gateway_url, state_dir, channel_id, "--last-event-id", stream_ids[2])

    assert status == 0
    assert [_parse_tail_line(line)[0] for line in lines] == stream_ids[3:]


async def test_tail_reconnects_after_gateway_drain(
    dev_stack: DevStack, state_dir: Path, channel_id: str
) -> None:
    # A second gateway on a fixed port, so that a replacement can take over the same URL.
    port = free_port()
    settings = dataclasses.replace(dev_stack.settings, gateway_port=port)
    gateway = create_server("gateway", settings, dev_stack.broker)
    await gateway.start()
    tail = asyncio.create_task(_tail(f"http://127.0.0.1:{port}", state_dir, channel_id))
    _, first_ids = await _send(dev_stack, state_dir, channel_id, "--phase", "start", "--sequence", "1")
    async with asyncio.timeout(_TIMEOUT_S):
        while gateway.open_stream_count == 0:
            await asyncio.sleep(0.02)

    await gateway.stop(grace_s=5)
    replacement = create_server("gateway", settings, dev_stack.broker)
    await replacement.start()
    try:
        _, delta_ids = await _send(dev_stack, state_dir, channel_id, "--phase", "delta", "--payload", '{"value": "x"}')
        _, end_ids = await _send(dev_stack, state_dir, channel_id, "--phase", "end", "--sequence", "3")
        status, lines = await tail
    finally:
        await replacement.stop(grace_s=5)

    parsed = [_parse_tail_line(line) for line in lines]
    stream_lines = [entry_id for entry_id, event, _ in parsed if event == "stream"]
    control = [data for _, event, data in parsed if event == "control"]
    assert status == 0
    assert stream_lines == [*first_ids, *delta_ids, *end_ids]
    assert [data["control_type"] for data in control] == ["server_draining"]


async def test_send_rejected_token_exits_1(
    dev_stack: DevStack, state_dir: Path, channel_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, stream_ids = await _send(dev_stack, state_dir, channel_id, "--phase", "start", "--token", "not-a-jwt")

    err = capsys.readouterr().err
    assert status == 1
    assert stream_ids == []
    assert err.startswith("conduit send: publish rejected: HTTP 401: ")
    assert "token" in err


async def test_send_grpc_rejected_token_exits_1(
    dev_stack: DevStack, state_dir: Path, channel_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = await _send(dev_stack, state_dir, channel_id, "--demo", "--grpc", "--token", "not-a-jwt")

    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("conduit send: publish rejected: gRPC UNAUTHENTICATED: ")


async def test_send_unreachable_url_exits_1(state_dir: Path, dev_keys: object, channel_id: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    args = build_parser().parse_args([
        "send", "--org-id", "1", "--channel-id", channel_id, "--phase", "end", "--url", url,
        "--state-dir", str(state_dir),
    ])

    status = await asyncio.wait_for(run_send(args, io.StringIO()), _TIMEOUT_S)

    assert status == 1
    assert capsys.readouterr().err.startswith(f"conduit send: cannot reach {url}: ")


async def test_tail_rejected_token_exits_1(
    dev_stack: DevStack, state_dir: Path, channel_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = await _tail(dev_stack.gateway_url, state_dir, channel_id, "--token", "not-a-jwt")

    err = capsys.readouterr().err
    assert status == 1
    assert lines == []
    assert err == "conduit tail: subscribe failed: HTTP 401: token is malformed\n"


async def test_tail_gives_up_after_reconnects(state_dir: Path, dev_keys: object, channel_id: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = await _tail(f"http://127.0.0.1:{free_port()}", state_dir, channel_id, "--max-reconnects", "1")

    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("conduit tail: subscribe failed: gave up: ConnectError")
    assert "after 1 reconnect)" in err


async def test_send_tail_default_urls_follow_ports(
    monkeypatch: pytest.MonkeyPatch, channel_id: str
) -> None:
    monkeypatch.setenv("PUBLISH_PORT", "18181")
    monkeypatch.setenv("PUBLISH_GRPC_PORT", "15151")
    monkeypatch.setenv("GATEWAY_PORT", "18180")

    send = build_parser().parse_args(["send", "--org-id", "1", "--channel-id", channel_id, "--phase", "end"])
    tail = build_parser().parse_args(["tail", "--org-id", "1", "--channel-id", channel_id])

    assert send.url == "http://127.0.0.1:18181"
    assert send.grpc_target == "127.0.0.1:15151"
    assert tail.url == "http://127.0.0.1:18180"


async def test_send_default_url_ignores_bad_port(monkeypatch: pytest.MonkeyPatch, channel_id: str) -> None:
    monkeypatch.setenv("PUBLISH_PORT", "http")

    send = build_parser().parse_args(["send", "--org-id", "1", "--channel-id", channel_id, "--phase", "end"])

    assert send.url == "http://127.0.0.1:8081"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--phase", "delta", "--payload", "[1]"], "--payload must be a JSON object, got list"),
        (["--phase", "delta", "--payload", '{"x": NaN}'], "--payload NaN is not valid JSON"),
        (["--phase", "delta", "--payload", "{"], "--payload not valid JSON"),
        (["--demo", "text", "--payload", "{}"], "--payload and --message-id apply to a single message"),
        (["--demo", " "], "--demo TEXT must not be empty"),
    ],
)
def test_send_bad_input_exits_2(
    dev_keys: object, state_dir: Path, channel_id: str, capsys: pytest.CaptureFixture[str],
    flags: list[str], message: str,
) -> None:
    status = main(["send", "--org-id", "1", "--channel-id", channel_id, "--state-dir", str(state_dir), *flags])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    ("org_id", "shown"),
    [("\u0663", repr("\u0663")), ("9" * 5000, repr("9" * 64) + "... (5000 characters)"), (str(2**64), repr(str(2**64)))],
)
def test_send_org_id_rejected_exits_2(
    channel_id: str, capsys: pytest.CaptureFixture[str], org_id: str, shown: str
) -> None:
    status = main(["send", "--org-id", org_id, "--channel-id", channel_id, "--demo"])

    err = capsys.readouterr().err
    assert status == 2
    assert f"argument --org-id: must be a non-negative 64-bit integer, got {shown}" in err
    assert "Traceback" not in err


def test_send_needs_phase_or_demo(channel_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["send", "--org-id", "1", "--channel-id", channel_id])

    assert status == 2
    assert "one of the arguments --phase --demo is required" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["hello, world!", " leading", "trailing ", "a  b", "   ", "one\ntwo three", ""])
def test_split_demo_text_restores_text(text: str) -> None:
    assert "".join(split_demo_text(text)) == text
