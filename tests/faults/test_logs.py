"""What ``conduit dev`` writes to stderr under ``LOG_FORMAT=json`` while clients use and misuse tokens.

Every line, uvicorn's access and error lines included, is one JSON object.
No token appears anywhere, and every line about a stream names its org_id and
channel_id.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import grpc
import httpx

from conduit.dev_keys import load_or_create_dev_keys
from conduit.tokens import mint_publisher_token
from conduit.v1alpha import publish_pb2, publish_pb2_grpc
from tests.faults.helpers import ORG_ID, Subscriber, delta_request, post_publish
from tests.faults.processes import ChildProcess, child_environment

_REQUEST_TIMEOUT_S = 10.0
_WAIT_TIMEOUT_S = 20.0
# Lines whose message starts with one of these are about one stream.
_STREAM_MESSAGES = ("stream opened", "stream closed", "publish rejected", "request rejected", "demo stream")


def _json_lines(log: str) -> list[dict[str, Any]]:
    lines = log.splitlines()
    parsed = []
    for number, line in enumerate(lines, start=1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from None
    return parsed


async def _port(child: ChildProcess, message: str) -> int:
    match = await child.wait_for_log(rf'"message": "{message}".*"port": (\d+)')
    return int(match.group(1))


async def _exercise(keys: Any, ports: dict[str, int], tokens: list[str]) -> None:
    """Publish and subscribe with valid, forged, foreign and garbage tokens; add every token used to ``tokens``."""
    publish_url = f"http://127.0.0.1:{ports['publish']}"
    gateway_url = f"http://127.0.0.1:{ports['gateway']}"
    events_url = f"{gateway_url}/events/{ORG_ID}"
    channel_id = "00000000-0000-4000-8000-0000000010a5"
    other_channel = "00000000-0000-4000-8000-0000000010a6"
    publisher = keys.publisher_token()
    forged = mint_publisher_token("not-the-dev-secret-0123456789abcdef", issuer=keys.issuer,
                                  audience=keys.publish_audience)
    subscriber = keys.subscriber_token(ORG_ID, channel_id)
    foreign = keys.subscriber_token(ORG_ID, other_channel)
    garbage = "eyJhbGciOiJSUzI1NiJ9.bm90LWEtdG9rZW4tYXQtYWxs.c2lnbmF0dXJlLXRoYXQtbGVha3M"
    tokens += [publisher, forged, subscriber, foreign, garbage]

    async with httpx.AsyncClient(timeout=httpx.Timeout(_REQUEST_TIMEOUT_S, read=30.0)) as client:
        follower = Subscriber(client, [events_url], channel_id=channel_id, token=subscriber, max_connections=1)
        await asyncio.wait_for(follower.connected.wait(), _WAIT_TIMEOUT_S)
        entry_ids = []
        for sequence, phase in enumerate((publish_pb2.PHASE_START, publish_pb2.PHASE_DELTA), start=1):
            response = await post_publish(client, publish_url, delta_request(channel_id, sequence, phase=phase),
                                          publisher, timeout_s=_REQUEST_TIMEOUT_S)
            assert response.status_code == 200, response.text
            entry_ids.append(response.text)

        rejected = await post_publish(client, publish_url, delta_request(channel_id, 3), forged,
                                      timeout_s=_REQUEST_TIMEOUT_S)
        assert rejected.status_code == 401
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            stub = publish_pb2_grpc.PublishServiceStub(channel)
            try:
                await stub.Publish(delta_request(channel_id, 3), metadata=(("authorization", f"Bearer {forged}"),),
                                   timeout=_REQUEST_TIMEOUT_S)
                raise AssertionError("gRPC accepted a forged token")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED

        params = {"channel_id": channel_id}
        # The follower holds the one connection that GATEWAY_MAX_CONNECTIONS_PER_TOKEN allows.
        assert (await client.get(events_url, params={**params, "token": subscriber})).status_code == 429
        assert (await client.get(events_url, params={**params, "token": foreign})).status_code == 403
        assert (await client.get(events_url, params={**params, "token": garbage})).status_code == 401
        bad_channel = await client.get(events_url, params={"channel_id": "not-a-uuid", "token": subscriber})
        assert bad_channel.status_code == 400
        started = await client.post(f"{gateway_url}/dev/start-stream", json={"org_id": ORG_ID})
        assert started.status_code in (200, 201), started.text
        tokens.append(started.json()["conduit"]["token"])

        end = delta_request(channel_id, 3, phase=publish_pb2.PHASE_END, payload={})
        assert (await post_publish(client, publish_url, end, publisher, timeout_s=_REQUEST_TIMEOUT_S)).status_code == 200
        await asyncio.wait_for(follower.task, _WAIT_TIMEOUT_S)
        resumed = Subscriber(client, [events_url], channel_id=channel_id, token=subscriber, max_connections=1,
                             last_event_id=entry_ids[0])
        await asyncio.wait_for(resumed.task, _WAIT_TIMEOUT_S)

    assert [event.id for event in follower.stream_events][:2] == entry_ids
    assert [event.id for event in resumed.stream_events][0] == entry_ids[1]


async def test_logs_json_dev_run_has_no_token(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    keys = load_or_create_dev_keys(state_dir)
    env = child_environment(None, "", LOG_FORMAT="json", GATEWAY_MAX_CONNECTIONS_PER_TOKEN="1")
    child = await ChildProcess.start(
        ["dev", "--state-dir", str(state_dir), "--publish-port", "0", "--publish-grpc-port", "0",
         "--gateway-port", "0"],
        env,
        tmp_path / "dev.log",
    )
    tokens: list[str] = []
    try:
        ports = {
            "gateway": await _port(child, "gateway listening"),
            "publish": await _port(child, "publish listening"),
            "grpc": await _port(child, "publish gRPC listening"),
        }
        await _exercise(keys, ports, tokens)
        child.send_signal(signal.SIGTERM)
        status = await child.wait()
    finally:
        await child.close()

    log = child.log
    lines = _json_lines(log)
    assert status == 0, log
    for token in tokens:
        signature = token.rsplit(".", 1)[-1]
        assert token not in log
        assert signature not in log
    # Every JWT starts with the base64 of '{"', so this also covers tokens minted elsewhere.
    assert "eyJ" not in log
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.access", "uvicorn.error"} <= loggers, loggers
    access = [line["message"] for line in lines if line["logger"] == "uvicorn.access"]
    assert any(f"/events/{ORG_ID}?[redacted]" in message for message in access), access
    about_streams = [line for line in lines if line["message"].startswith(_STREAM_MESSAGES)]
    assert about_streams
    missing_ids = [line for line in about_streams if "org_id" not in line or "channel_id" not in line]
    assert missing_ids == []
