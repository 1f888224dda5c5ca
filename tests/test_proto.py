"""The wire format: compatibility with the legacy PublishRequest, fresh generated code, and buf lint."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from conduit.v1alpha.publish_pb2 import Phase, PublishRequest

ROOT = Path(__file__).resolve().parent.parent
GENERATED_FILES = ["publish_pb2.py", "publish_pb2.pyi", "publish_pb2_grpc.py"]
BUF_TIMEOUT_S = 120

CHANNEL = "97f58c19-ce38-4c6b-8a5b-47f3405691f0"
MESSAGE = "3f1c7a52-8a0e-4b8e-9f7d-2d4c6b1e0a93"


def build_legacy_request_class() -> type[Message]:
    """Define the publishers' PublishRequest (fields 1 to 6) in a descriptor pool of its own.

    It shares nothing with conduit/v1alpha but the well-known types, so the
    test compares two independent definitions of the same wire format.
    """
    pool = descriptor_pool.DescriptorPool()
    for well_known in (timestamp_pb2, struct_pb2):
        file_proto = descriptor_pb2.FileDescriptorProto()
        well_known.DESCRIPTOR.CopyToProto(file_proto)
        pool.Add(file_proto)

    legacy = descriptor_pb2.FileDescriptorProto(
        name="legacy/publish.proto",
        package="legacy",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/struct.proto"],
    )
    phase = legacy.enum_type.add(name="Phase")
    for number, name in enumerate(["UNSPECIFIED", "START", "DELTA", "END", "ERROR"]):
        phase.value.add(name=f"PHASE_{name}", number=number)

    field = descriptor_pb2.FieldDescriptorProto
    message = legacy.message_type.add(name="PublishRequest")
    message.field.add(name="channel_id", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    message.field.add(name="message_id", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    message.field.add(
        name="client_timestamp",
        number=3,
        type=field.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=field.LABEL_OPTIONAL,
    )
    message.field.add(
        name="phase", number=4, type=field.TYPE_ENUM, type_name=".legacy.Phase", label=field.LABEL_OPTIONAL
    )
    message.field.add(name="sequence", number=5, type=field.TYPE_UINT64, label=field.LABEL_OPTIONAL)
    message.field.add(
        name="payload",
        number=6,
        type=field.TYPE_MESSAGE,
        type_name=".google.protobuf.Struct",
        label=field.LABEL_OPTIONAL,
    )
    pool.Add(legacy)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("legacy.PublishRequest"))


def test_proto_legacy_bytes_decode_unchanged() -> None:
    legacy_class = build_legacy_request_class()
    legacy = legacy_class(channel_id=CHANNEL, message_id=MESSAGE, phase=2, sequence=2**63 + 7)
    legacy.client_timestamp.FromSeconds(1_733_350_000)
    legacy.client_timestamp.nanos = 123
    legacy.payload.update({"value": "hello,", "nested": {"list": [1, "two", None, True]}})

    decoded = PublishRequest.FromString(legacy.SerializeToString())

    assert decoded.channel_id == CHANNEL
    assert decoded.message_id == MESSAGE
    assert decoded.client_timestamp.seconds == 1_733_350_000
    assert decoded.client_timestamp.nanos == 123
    assert decoded.phase == Phase.PHASE_DELTA
    assert decoded.sequence == 2**63 + 7
    assert dict(decoded.payload) == {"value": "hello,", "nested": {"list": [1.0, "two", None, True]}}
    assert decoded.org_id == 0


def test_proto_new_bytes_decode_in_legacy() -> None:
    legacy_class = build_legacy_request_class()
    request = PublishRequest(channel_id=CHANNEL, message_id=MESSAGE, phase=Phase.PHASE_END, sequence=9, org_id=123)
    request.client_timestamp.FromSeconds(1_733_350_001)
    request.payload.update({"done": True})

    legacy = legacy_class.FromString(request.SerializeToString())

    assert legacy.channel_id == CHANNEL
    assert legacy.message_id == MESSAGE
    assert legacy.client_timestamp.seconds == 1_733_350_001
    assert legacy.phase == 3
    assert legacy.sequence == 9
    assert dict(legacy.payload) == {"done": True}
    # org_id is an unknown field to the old definition, kept when the bytes are passed on.
    assert PublishRequest.FromString(legacy.SerializeToString()).org_id == 123


def test_proto_hand_encoded_bytes_decode() -> None:
    # Tag bytes: (field number << 3) | wire type; 2 is length-delimited, 0 is varint.
    data = b"".join(
        [
            b"\x0a\x24" + CHANNEL.encode(),  # 1 channel_id, 36 bytes
            b"\x12\x24" + MESSAGE.encode(),  # 2 message_id, 36 bytes
            b"\x1a\x06\x08\xf0\xa4\xc3\xba\x06",  # 3 client_timestamp { seconds: 1733350000 }
            b"\x20\x01",  # 4 phase: PHASE_START
            b"\x28\x05",  # 5 sequence: 5
            # 6 payload: Struct { fields { key: "k" value { number_value: 2.5 } } }
            b"\x32\x10\x0a\x0e\x0a\x01k\x12\x09\x11" + struct.pack("<d", 2.5),
            b"\x38\x7b",  # 7 org_id: 123
        ]
    )

    decoded = PublishRequest.FromString(data)

    assert decoded.channel_id == CHANNEL
    assert decoded.message_id == MESSAGE
    assert decoded.client_timestamp.seconds == 1_733_350_000
    assert decoded.phase == Phase.PHASE_START
    assert decoded.sequence == 5
    assert dict(decoded.payload) == {"k": 2.5}
    assert decoded.org_id == 123


def test_proto_generated_code_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate_proto", ROOT / "scripts" / "generate_proto.py")
    assert spec is not None and spec.loader is not None
    generate_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_proto)

    generate_proto.generate(tmp_path)

    for name in GENERATED_FILES:
        fresh = (tmp_path / "conduit" / "v1alpha" / name).read_text(encoding="utf-8")
        committed = (ROOT / "conduit" / "v1alpha" / name).read_text(encoding="utf-8")
        assert fresh == committed, f"conduit/v1alpha/{name} is stale: run scripts/generate_proto.py"


def test_proto_buf_lint_passes() -> None:
    buf = Path(sys.executable).parent / "buf"
    if not buf.exists():
        pytest.fail(f"buf not found at {buf}: install the test extra (pip install -e '.[test]')")

    result = subprocess.run(
        [str(buf), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=BUF_TIMEOUT_S, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
