"""Tests of ``gateway_http.direct_write`` against the installed uvicorn's httptools response cycle."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway_http import direct_write
from gateway_http.direct_write import frame_live, streaming_transport, uvicorn_cycle, write_live
from gateway_http.events import SseEvent, control_event


class RecordingTransport(asyncio.Transport):
    """A transport that keeps every write, so two cycles' bytes can be compared."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


def make_cycle() -> tuple[RequestResponseCycle, RecordingTransport]:
    transport = RecordingTransport()
    scope = {"type": "http", "method": "GET", "http_version": "1.1", "path": "/events/1", "query_string": b""}
    cycle = RequestResponseCycle(
        scope=scope,  # type: ignore[arg-type]
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    return cycle, transport


async def started_cycle() -> tuple[RequestResponseCycle, RecordingTransport]:
    cycle, transport = make_cycle()
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    transport.written.clear()
    return cycle, transport


def stream_event(sequence: int, *, is_end: bool = False) -> SseEvent:
    frame = f"event: stream\nid: 5-{sequence}\ndata: {{\"sequence\":{sequence}}}\n\n".encode()
    return SseEvent(frame=frame, kind="stream", entry_id=f"5-{sequence}", entry_key=(5, sequence), is_end=is_end)


def sent_stream_events() -> float:
    return REGISTRY.get_sample_value("conduit_gateway_events_sent_total", {"event": "stream"}) or 0.0


@pytest.mark.parametrize("size", [1, 3])
async def test_write_live_bytes_match_uvicorn_send(size: int) -> None:
    batch = [stream_event(number) for number in range(size)]
    direct, direct_transport = await started_cycle()
    through_asgi, asgi_transport = await started_cycle()

    assert write_live(direct, batch)
    body = b"".join(event.frame for event in batch)
    await through_asgi.send({"type": "http.response.body", "body": body, "more_body": True})

    assert bytes(direct_transport.written) == bytes(asgi_transport.written)


async def test_write_live_same_batch_twice() -> None:
    batch = [stream_event(1)]
    first, first_transport = await started_cycle()
    second, second_transport = await started_cycle()

    assert write_live(first, batch)
    assert write_live(second, batch)

    assert first_transport.written == second_transport.written
    assert first_transport.written.endswith(batch[0].frame + b"\r\n")


async def test_write_live_declines_control_and_end() -> None:
    cycle, transport = await started_cycle()

    assert not write_live(cycle, [stream_event(1), control_event("server_draining")])
    assert not write_live(cycle, [stream_event(2, is_end=True)])
    assert transport.written == b""


async def test_write_live_declines_when_write_paused() -> None:
    cycle, transport = await started_cycle()
    cycle.flow.pause_writing()

    assert not write_live(cycle, [stream_event(1)])
    assert transport.written == b""


async def test_write_live_declines_after_disconnect() -> None:
    cycle, transport = await started_cycle()
    cycle.disconnected = True

    assert not write_live(cycle, [stream_event(1)])
    assert transport.written == b""


async def test_write_live_declines_before_response_start() -> None:
    cycle, transport = make_cycle()

    assert not write_live(cycle, [stream_event(1)])
    assert transport.written == b""


async def test_write_live_declines_after_response_end() -> None:
    cycle, transport = await started_cycle()
    await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
    transport.written.clear()

    assert not write_live(cycle, [stream_event(1)])
    assert transport.written == b""


async def test_write_live_counts_after_loop_pass() -> None:
    cycle, _ = await started_cycle()
    before = sent_stream_events()

    assert write_live(cycle, [stream_event(1), stream_event(2)])
    assert write_live(cycle, [stream_event(1), stream_event(2)])
    await asyncio.sleep(0)

    assert sent_stream_events() == before + 4


async def test_uvicorn_cycle_found_behind_send() -> None:
    cycle, _ = make_cycle()

    assert uvicorn_cycle(cycle.send) is cycle


async def test_uvicorn_cycle_none_for_other_send() -> None:
    async def send(message: object) -> None:
        return None

    assert uvicorn_cycle(send) is None


def test_write_live_counts_across_loops() -> None:
    """A count left by a loop that stopped before its flush is added on the next loop."""
    before = sent_stream_events()
    first_loop = asyncio.new_event_loop()
    cycle, _ = first_loop.run_until_complete(started_cycle())

    def write_and_stop() -> None:
        assert write_live(cycle, [stream_event(1)])
        first_loop.stop()  # the flush, scheduled for the next iteration, never runs

    first_loop.call_soon(write_and_stop)
    first_loop.run_forever()
    first_loop.close()
    stopped_early = sent_stream_events()

    async def write_and_yield() -> None:
        next_cycle, _ = await started_cycle()
        assert write_live(next_cycle, [stream_event(2)])
        await asyncio.sleep(0)

    asyncio.run(write_and_yield())

    assert stopped_early == before
    assert sent_stream_events() == before + 2


async def test_write_live_off_without_uvicorn_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_write, "_HttptoolsCycle", RequestResponseCycle)
    cycle, transport = await started_cycle()

    assert not write_live(object(), [stream_event(1)])
    assert uvicorn_cycle(cycle.send) is None
    assert not write_live(cycle, [stream_event(2)])
    assert transport.written == b""


async def test_streaming_transport_takes_frame_live_chunks() -> None:
    batch = [stream_event(1), stream_event(2)]
    direct, direct_transport = await started_cycle()
    through_write_live, other_transport = await started_cycle()

    transport = streaming_transport(direct)
    chunk = frame_live(batch)
    assert transport is direct_transport
    assert chunk is not None
    transport.write(chunk)
    assert write_live(through_write_live, batch)

    assert direct_transport.written == other_transport.written
    assert frame_live([stream_event(3, is_end=True)]) is None


async def test_streaming_transport_none_when_write_live_declines() -> None:
    paused, _ = await started_cycle()
    paused.flow.pause_writing()
    disconnected, _ = await started_cycle()
    disconnected.disconnected = True
    not_started, _ = make_cycle()

    assert streaming_transport(paused) is None
    assert streaming_transport(disconnected) is None
    assert streaming_transport(not_started) is None
