"""Key names must match the Rust services' byte for byte, and share cluster slots as documented."""

from __future__ import annotations

import pytest
import xxhash
from redis.crc import key_slot

from broker.keys import all_tracking_keys, rate_limit_key, stream_key, stream_log_fields, tracking_key

EXAMPLE_STREAM = "stream:123:97f58c19-ce38-4c6b-8a5b-47f3405691f0"


def test_stream_key_matches_documented_example() -> None:
    assert stream_key(123, "97f58c19-ce38-4c6b-8a5b-47f3405691f0") == EXAMPLE_STREAM


def test_xxh3_is_64_bit_with_seed_zero() -> None:
    # Reference value of XXH3_64bits("") from the xxHash test vectors.
    assert xxhash.xxh3_64_intdigest(b"") == 0x2D06800538D394C2


def test_tracking_key_example_shard() -> None:
    shard = xxhash.xxh3_64_intdigest(EXAMPLE_STREAM.encode()) % 64

    assert shard == 62
    assert tracking_key(EXAMPLE_STREAM) == "stream_timestamps:{62}"


def test_all_tracking_keys_lists_64_shards_in_order() -> None:
    keys = all_tracking_keys()

    assert len(keys) == 64
    assert keys[0] == "stream_timestamps:{0}"
    assert keys[63] == "stream_timestamps:{63}"
    assert len(set(keys)) == 64


def test_rate_limit_key_shares_stream_slot() -> None:
    counter = rate_limit_key(EXAMPLE_STREAM)

    assert counter == "conduit:rate:{stream:123:97f58c19-ce38-4c6b-8a5b-47f3405691f0}"
    assert key_slot(counter.encode()) == key_slot(EXAMPLE_STREAM.encode())


def test_stream_log_fields_channel_stream() -> None:
    fields = stream_log_fields("stream:123:97f58c19-ce38-4c6b-8a5b-47f3405691f0")

    assert fields == {"org_id": 123, "channel_id": "97f58c19-ce38-4c6b-8a5b-47f3405691f0"}


@pytest.mark.parametrize("key", ["stream_timestamps:{7}", "stream:abc:97f58c19", "other"])
def test_stream_log_fields_other_key_kept_whole(key: str) -> None:
    assert stream_log_fields(key) == {"stream": key}
