"""Checks that every publish passes before the first broker call.

Both front doors hand over the encoded PublishRequest exactly as it arrived:
the HTTP shim its body, the gRPC service the raw request message. The checks
run in a fixed order, so a request with several problems always reports the
same one first:

1. ``decode_request``: size against ``max_message_bytes``, then protobuf decoding.
2. ``check_request``: org_id, channel_id, message_id, phase, payload.

Every error message names the field and the value received, shortened when long.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct, Value

from broker.keys import stream_key
from conduit.errors import InvalidArgument, PayloadTooLarge
from conduit.ids import UINT64_DIGITS, UINT64_MAX, UUID_PATTERN, describe_value
from conduit.v1alpha.publish_pb2 import Phase, PublishRequest

__all__ = [
    "UINT64_MAX",
    "PathIds",
    "ValidatedPublish",
    "check_request",
    "decode_request",
    "describe_value",
    "parse_path",
    "validate_publish",
]

_UUID_FORM = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_ACCEPTED_PHASES = (Phase.PHASE_START, Phase.PHASE_DELTA, Phase.PHASE_END, Phase.PHASE_ERROR)
# Looked up once: each attribute access on a protobuf enum wrapper costs about a microsecond.
_PHASE_END = Phase.PHASE_END
# A number_value is a tag and a little-endian IEEE 754 double. NaN and the
# infinities have all 11 exponent bits set: the high 4 bits of byte 7 and the
# low 7 bits of byte 8. The tag (google.protobuf.Value field 2, wire type
# 64-bit) is the byte 0x11, or an overlong varint that upb (protobuf 7.36) accepts too:
# 0x91, any number of 0x80, then 0x00. Bytes that match neither pattern hold no
# such number. Two searches that each start with a literal byte cost less than
# one pattern with both forms of the tag.
_NON_FINITE_NUMBER = re.compile(rb"\x11[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]")
_OVERLONG_TAG_NON_FINITE_NUMBER = re.compile(rb"\x91\x80*\x00[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]")


@dataclass(frozen=True, slots=True)
class PathIds:
    """The org_id and channel_id that an HTTP path names, already validated and normalised."""

    org_id: int
    channel_id: str


@dataclass(frozen=True, slots=True)
class ValidatedPublish:
    """A publish that passed every check and is ready for ``Broker.append``."""

    stream_key: str
    data: bytes
    """Bytes to store: the request as received, or re-encoded when an id had to be normalised."""
    end: bool
    """True for PHASE_END, which sets the stream's expiry."""
    org_id: int
    channel_id: str
    message_id: str


def parse_path(org_id: str, channel_id: str) -> PathIds:
    """Validate the path parameters of ``POST /publish/{org_id}/{channel_id}``.

    Raises InvalidArgument unless org_id is a decimal integer from 0 to 2**64-1
    and channel_id is a UUID in the canonical hyphenated form.
    """
    if not UINT64_DIGITS.fullmatch(org_id):
        if org_id.isascii() and org_id.isdigit():
            raise InvalidArgument(f"org_id in the path must be at most {UINT64_MAX}, got {describe_value(org_id)}")
        raise InvalidArgument(f"org_id in the path must be a non-negative integer, got {describe_value(org_id)}")
    org = int(org_id)
    if org > UINT64_MAX:
        raise InvalidArgument(f"org_id in the path must be at most {UINT64_MAX}, got {describe_value(org_id)}")

    return PathIds(org_id=org, channel_id=_canonical_uuid(channel_id, "channel_id in the path"))


def decode_request(data: bytes, *, max_message_bytes: int) -> PublishRequest:
    """Decode an encoded PublishRequest after checking its size.

    Raises PayloadTooLarge over ``max_message_bytes`` and InvalidArgument when
    the bytes are not a PublishRequest.
    """
    if len(data) > max_message_bytes:
        raise PayloadTooLarge(
            f"PublishRequest is {len(data)} bytes, over the limit of {max_message_bytes} bytes"
        )
    try:
        return PublishRequest.FromString(data)
    except DecodeError as error:
        # upb reports "Error parsing message with type '...': <reason>", and only the reason helps the caller.
        reason = str(error).rpartition(": ")[2] or "undecodable"
        if "MaxDepth" in reason:
            reason = "messages are nested deeper than the protobuf decoder allows"
        raise InvalidArgument(f"request is not a valid binary-encoded conduit.v1alpha.PublishRequest (JSON is not accepted): {reason}") from None


def check_request(request: PublishRequest, data: bytes, *, path: PathIds | None = None) -> ValidatedPublish:
    """Check the fields of a decoded request; ``data`` is the encoding it came from.

    ``path`` carries the ids of an HTTP path: a non-zero body org_id and a
    non-empty body channel_id must equal them, and an empty body channel_id
    takes the path's. Without ``path`` (gRPC) the request must carry both.
    Raises InvalidArgument naming the first field that fails.
    """
    org_id = _check_org_id(request.org_id, path)
    channel_id = _check_channel_id(request.channel_id, path)
    message_id = _canonical_uuid(request.message_id, "message_id")
    _check_phase(request.phase)
    # The walk of the payload runs only when the bytes may hold a non-finite number.
    if _NON_FINITE_NUMBER.search(data) or _OVERLONG_TAG_NON_FINITE_NUMBER.search(data):
        _check_payload(request.payload)

    # Store what arrived unless an id changed, so the gateway sends the normalised ids.
    if request.channel_id != channel_id or request.message_id != message_id:
        request.channel_id = channel_id
        request.message_id = message_id
        data = request.SerializeToString()

    return ValidatedPublish(
        stream_key=stream_key(org_id, channel_id),
        data=data,
        end=request.phase == _PHASE_END,
        org_id=org_id,
        channel_id=channel_id,
        message_id=message_id,
    )


def validate_publish(data: bytes, *, max_message_bytes: int, path: PathIds | None = None) -> ValidatedPublish:
    """Run ``decode_request`` and ``check_request`` on ``data``."""
    request = decode_request(data, max_message_bytes=max_message_bytes)
    return check_request(request, data, path=path)


def _canonical_uuid(value: str, field: str) -> str:
    if value == "":
        raise InvalidArgument(f"{field} is missing: set it to a UUID ({_UUID_FORM})")
    if not UUID_PATTERN.fullmatch(value):
        raise InvalidArgument(f"{field} must be a UUID ({_UUID_FORM}), got {describe_value(value)}")
    return value.lower()


def _check_org_id(org_id: int, path: PathIds | None) -> int:
    if path is None:
        if org_id == 0:
            raise InvalidArgument("org_id is missing: set it to the organization that owns the channel")
        return org_id
    if org_id != 0 and org_id != path.org_id:
        raise InvalidArgument(f"org_id {org_id} in the request does not match org_id {path.org_id} in the path")
    return path.org_id


def _check_channel_id(channel_id: str, path: PathIds | None) -> str:
    if path is None:
        return _canonical_uuid(channel_id, "channel_id")
    if channel_id == "":
        return path.channel_id
    canonical = _canonical_uuid(channel_id, "channel_id")
    if canonical != path.channel_id:
        raise InvalidArgument(
            f"channel_id {canonical!r} in the request does not match channel_id {path.channel_id!r} in the path"
        )
    return canonical


def _check_phase(phase: int) -> None:
    if phase in _ACCEPTED_PHASES:
        return
    expected = ", ".join(Phase.Name(accepted) for accepted in _ACCEPTED_PHASES)
    if phase == Phase.PHASE_UNSPECIFIED:
        raise InvalidArgument(f"phase must be one of {expected}, got PHASE_UNSPECIFIED (0)")
    raise InvalidArgument(f"phase must be one of {expected}, got {phase}, which is not a Phase value")


def _check_payload(payload: Struct) -> None:
    """Reject numbers that JSON cannot represent (NaN, Infinity), at any depth."""
    pending: list[tuple[str, Value]] = [(f"payload.{key}", value) for key, value in payload.fields.items()]
    while pending:
        location, value = pending.pop()
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            raise InvalidArgument(
                f"{describe_value(location)} is {_json_name(value.number_value)}, which JSON cannot represent"
            )
        if kind == "struct_value":
            pending.extend((f"{location}.{key}", item) for key, item in value.struct_value.fields.items())
        elif kind == "list_value":
            pending.extend((f"{location}[{index}]", item) for index, item in enumerate(value.list_value.values))


def _json_name(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"
