"""ChannelReader's pass over one read's entries and its pause, and the encoding of those entries."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from broker.base import Entry
from conduit.errors import BrokerUnavailable
from gateway_http import encoding
from gateway_http.encoding import _ThrottledWarning, encode_entries
from gateway_http.events import SseEvent
from gateway_http.hub_reader import Channel, ChannelReader, ReadPolicy
from tests.gateway_http.helpers import ORG_ID, encode

CHANNEL_ID = "97f58c19-ce38-4c6b-8a5b-47f3405691f0"
STREAM = f"stream:{ORG_ID}:{CHANNEL_ID}"


class RecordingSubscriber:
    """A live subscriber that keeps every event list it is handed."""

    def __init__(self) -> None:
        self.delivered: list[list[SseEvent]] = []

    def deliver(self, events: list[SseEvent], frame: bytes | None, now: float) -> bool:
        self.delivered.append(events)
        return False

    def fail(self, error: BrokerUnavailable) -> None:
        raise AssertionError(f"unexpected failure: {error}")


def reader_with_channel(position: str, subscriber: RecordingSubscriber) -> ChannelReader:
    reader = ChannelReader(None, "", ReadPolicy(100, 1000, 1.0), lambda stopped: None)  # type: ignore[arg-type]
    reader.channels[STREAM] = Channel(STREAM, position, {subscriber})  # type: ignore[arg-type]
    return reader


def entry(entry_id: str, sequence: int) -> Entry:
    return Entry(entry_id, encode(CHANNEL_ID, sequence=sequence))


def test_fan_out_hands_new_entries_on() -> None:
    subscriber = RecordingSubscriber()
    reader = reader_with_channel("5-0", subscriber)

    reader._fan_out({STREAM: [entry("6-0", 1), entry("7-0", 2)]})

    assert [[event.entry_id for event in events] for events in subscriber.delivered] == [["6-0", "7-0"]]
    assert reader.channels[STREAM].position == "7-0"


def test_fan_out_drops_entries_at_or_before_position() -> None:
    # A channel that closed and opened again during the read is already past some entries.
    subscriber = RecordingSubscriber()
    reader = reader_with_channel("6-0", subscriber)

    reader._fan_out({STREAM: [entry("5-0", 1), entry("6-0", 2), entry("7-0", 3)]})

    assert [[event.entry_id for event in events] for events in subscriber.delivered] == [["7-0"]]
    assert reader.channels[STREAM].position == "7-0"


def test_fan_out_skips_read_of_only_old_entries() -> None:
    subscriber = RecordingSubscriber()
    reader = reader_with_channel("9-0", subscriber)

    reader._fan_out({STREAM: [entry("5-0", 1), entry("9-0", 2)]})

    assert subscriber.delivered == []
    assert reader.channels[STREAM].position == "9-0"


@pytest.mark.parametrize(
    ("channels", "expected_s"),
    [(99, 0.0), (100, 0.0002), (500, 0.001), (1_000, 0.002), (5_000, 0.002)],
)
def test_pause_grows_with_channels_up_to_cap(channels: int, expected_s: float) -> None:
    reader = ChannelReader(None, "", ReadPolicy(100, 1000, 1.0), lambda stopped: None)  # type: ignore[arg-type]
    for number in range(channels):
        reader.channels[f"stream:{ORG_ID}:{number}"] = Channel(f"stream:{ORG_ID}:{number}", "0-0")

    assert reader._pause_s() == pytest.approx(expected_s)


def test_encode_entries_logs_skipped_entry_with_ids(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process-wide warning is throttled, so the test uses a fresh one that logs every skip.
    monkeypatch.setattr(encoding, "_skipped_entry_log", _ThrottledWarning("skipping undecodable stream entry", 0))
    encoded_before = REGISTRY.get_sample_value("conduit_gateway_encoded_entries_total") or 0.0
    caplog.set_level(logging.WARNING, logger="gateway_http.encoding")

    events = encode_entries([entry("5-0", 1), Entry("6-0", b"\xff\xff not a protobuf")], STREAM)

    assert [event.entry_id for event in events] == ["5-0"]
    assert REGISTRY.get_sample_value("conduit_gateway_encoded_entries_total") == encoded_before + 2
    skipped = [record for record in caplog.records if record.name == "gateway_http.encoding"]
    assert len(skipped) == 1
    assert skipped[0].__dict__["org_id"] == ORG_ID
    assert skipped[0].__dict__["channel_id"] == CHANNEL_ID
    assert skipped[0].__dict__["entry_id"] == "6-0"
