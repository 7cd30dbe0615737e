import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Record(_message.Message):
    __slots__ = ("payload", "metadata", "space", "segment", "sequence", "position", "timestamp", "transaction_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    metadata: _containers.ScalarMap[str, str]
    space: str
    segment: str
    sequence: int
    position: int
    timestamp: _timestamp_pb2.Timestamp
    transaction_id: str
    def __init__(self, payload: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., space: _Optional[str] = ..., segment: _Optional[str] = ..., sequence: _Optional[int] = ..., position: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class RecordInput(_message.Message):
    __slots__ = ("payload", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, payload: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ProduceRequest(_message.Message):
    __slots__ = ("space", "writes", "transaction_id")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    space: str
    writes: _containers.RepeatedCompositeFieldContainer[SegmentWrite]
    transaction_id: str
    def __init__(self, space: _Optional[str] = ..., writes: _Optional[_Iterable[_Union[SegmentWrite, _Mapping]]] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class SegmentWrite(_message.Message):
    __slots__ = ("segment", "records", "expected_sequence")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    segment: str
    records: _containers.RepeatedCompositeFieldContainer[RecordInput]
    expected_sequence: int
    def __init__(self, segment: _Optional[str] = ..., records: _Optional[_Iterable[_Union[RecordInput, _Mapping]]] = ..., expected_sequence: _Optional[int] = ...) -> None: ...

class ProduceResponse(_message.Message):
    __slots__ = ("acks", "first_position", "last_position", "timestamp", "duplicate")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    FIRST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[SegmentAck]
    first_position: int
    last_position: int
    timestamp: _timestamp_pb2.Timestamp
    duplicate: bool
    def __init__(self, acks: _Optional[_Iterable[_Union[SegmentAck, _Mapping]]] = ..., first_position: _Optional[int] = ..., last_position: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SegmentAck(_message.Message):
    __slots__ = ("segment", "first_sequence", "last_sequence")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    segment: str
    first_sequence: int
    last_sequence: int
    def __init__(self, segment: _Optional[str] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("space", "segment", "from_offset", "from_timestamp", "from_consumer", "from_end", "to_offset", "limit", "max_batch", "follow", "segment_prefix")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    FROM_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    FROM_CONSUMER_FIELD_NUMBER: _ClassVar[int]
    FROM_END_FIELD_NUMBER: _ClassVar[int]
    TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    space: str
    segment: str
    from_offset: int
    from_timestamp: _timestamp_pb2.Timestamp
    from_consumer: str
    from_end: bool
    to_offset: int
    limit: int
    max_batch: int
    follow: bool
    segment_prefix: str
    def __init__(self, space: _Optional[str] = ..., segment: _Optional[str] = ..., from_offset: _Optional[int] = ..., from_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., from_consumer: _Optional[str] = ..., from_end: _Optional[bool] = ..., to_offset: _Optional[int] = ..., limit: _Optional[int] = ..., max_batch: _Optional[int] = ..., follow: _Optional[bool] = ..., segment_prefix: _Optional[str] = ...) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class PeekRequest(_message.Message):
    __slots__ = ("space", "segment")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    space: str
    segment: str
    def __init__(self, space: _Optional[str] = ..., segment: _Optional[str] = ...) -> None: ...

class PeekResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: Record
    def __init__(self, record: _Optional[_Union[Record, _Mapping]] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("consumer", "space", "segment", "offset", "expected_offset")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    space: str
    segment: str
    offset: int
    expected_offset: int
    def __init__(self, consumer: _Optional[str] = ..., space: _Optional[str] = ..., segment: _Optional[str] = ..., offset: _Optional[int] = ..., expected_offset: _Optional[int] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("offset",)
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    offset: int
    def __init__(self, offset: _Optional[int] = ...) -> None: ...

class GetOffsetRequest(_message.Message):
    __slots__ = ("consumer", "space", "segment")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    space: str
    segment: str
    def __init__(self, consumer: _Optional[str] = ..., space: _Optional[str] = ..., segment: _Optional[str] = ...) -> None: ...

class GetOffsetResponse(_message.Message):
    __slots__ = ("offset",)
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    offset: int
    def __init__(self, offset: _Optional[int] = ...) -> None: ...

class ListSpacesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSpacesResponse(_message.Message):
    __slots__ = ("spaces", "next_page_token")
    SPACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    spaces: _containers.RepeatedCompositeFieldContainer[SpaceInfo]
    next_page_token: str
    def __init__(self, spaces: _Optional[_Iterable[_Union[SpaceInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SpaceInfo(_message.Message):
    __slots__ = ("name", "last_position", "last_timestamp")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    name: str
    last_position: int
    last_timestamp: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., last_position: _Optional[int] = ..., last_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ("space", "page_size", "page_token")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    space: str
    page_size: int
    page_token: str
    def __init__(self, space: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("segments", "next_page_token")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    next_page_token: str
    def __init__(self, segments: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SegmentInfo(_message.Message):
    __slots__ = ("name", "last_sequence", "last_position", "last_timestamp")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    name: str
    last_sequence: int
    last_position: int
    last_timestamp: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., last_sequence: _Optional[int] = ..., last_position: _Optional[int] = ..., last_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
