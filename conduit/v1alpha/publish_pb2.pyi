import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_START: _ClassVar[Phase]
    PHASE_DELTA: _ClassVar[Phase]
    PHASE_END: _ClassVar[Phase]
    PHASE_ERROR: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
PHASE_START: Phase
PHASE_DELTA: Phase
PHASE_END: Phase
PHASE_ERROR: Phase

class PublishRequest(_message.Message):
    __slots__ = ("channel_id", "message_id", "client_timestamp", "phase", "sequence", "payload", "org_id")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    client_timestamp: _timestamp_pb2.Timestamp
    phase: Phase
    sequence: int
    payload: _struct_pb2.Struct
    org_id: int
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ..., client_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., phase: _Optional[_Union[Phase, str]] = ..., sequence: _Optional[int] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., org_id: _Optional[int] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    def __init__(self, stream_id: _Optional[str] = ...) -> None: ...
