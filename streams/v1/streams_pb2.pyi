import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ordering(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDERING_UNSPECIFIED: _ClassVar[Ordering]
    ORDERING_PER_SEGMENT: _ClassVar[Ordering]
    ORDERING_NONE: _ClassVar[Ordering]

class NackAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NACK_ACTION_UNSPECIFIED: _ClassVar[NackAction]
    NACK_ACTION_RETRY: _ClassVar[NackAction]
    NACK_ACTION_PARK: _ClassVar[NackAction]
ORDERING_UNSPECIFIED: Ordering
ORDERING_PER_SEGMENT: Ordering
ORDERING_NONE: Ordering
NACK_ACTION_UNSPECIFIED: NackAction
NACK_ACTION_RETRY: NackAction
NACK_ACTION_PARK: NackAction

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
    __slots__ = ("name", "last_position", "last_timestamp", "first_position", "record_count", "bytes", "config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    FIRST_POSITION_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    last_position: int
    last_timestamp: _timestamp_pb2.Timestamp
    first_position: int
    record_count: int
    bytes: int
    config: SpaceConfig
    def __init__(self, name: _Optional[str] = ..., last_position: _Optional[int] = ..., last_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_position: _Optional[int] = ..., record_count: _Optional[int] = ..., bytes: _Optional[int] = ..., config: _Optional[_Union[SpaceConfig, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("name", "last_sequence", "last_position", "last_timestamp", "first_sequence", "record_count", "bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    last_sequence: int
    last_position: int
    last_timestamp: _timestamp_pb2.Timestamp
    first_sequence: int
    record_count: int
    bytes: int
    def __init__(self, name: _Optional[str] = ..., last_sequence: _Optional[int] = ..., last_position: _Optional[int] = ..., last_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_sequence: _Optional[int] = ..., record_count: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class TrimRequest(_message.Message):
    __slots__ = ("space", "segment", "before_offset", "before_timestamp")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BEFORE_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    space: str
    segment: str
    before_offset: int
    before_timestamp: _timestamp_pb2.Timestamp
    def __init__(self, space: _Optional[str] = ..., segment: _Optional[str] = ..., before_offset: _Optional[int] = ..., before_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrimResponse(_message.Message):
    __slots__ = ("first_offset",)
    FIRST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    first_offset: int
    def __init__(self, first_offset: _Optional[int] = ...) -> None: ...

class DeleteSegmentRequest(_message.Message):
    __slots__ = ("space", "segment", "expected_sequence")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    space: str
    segment: str
    expected_sequence: int
    def __init__(self, space: _Optional[str] = ..., segment: _Optional[str] = ..., expected_sequence: _Optional[int] = ...) -> None: ...

class DeleteSegmentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteSpaceRequest(_message.Message):
    __slots__ = ("space",)
    SPACE_FIELD_NUMBER: _ClassVar[int]
    space: str
    def __init__(self, space: _Optional[str] = ...) -> None: ...

class DeleteSpaceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpaceConfig(_message.Message):
    __slots__ = ("retention",)
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    retention: RetentionPolicy
    def __init__(self, retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...

class RetentionPolicy(_message.Message):
    __slots__ = ("max_age", "max_records_per_segment", "max_bytes")
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_PER_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_age: _duration_pb2.Duration
    max_records_per_segment: int
    max_bytes: int
    def __init__(self, max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_records_per_segment: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class ConfigureSpaceRequest(_message.Message):
    __slots__ = ("space", "config")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    space: str
    config: SpaceConfig
    def __init__(self, space: _Optional[str] = ..., config: _Optional[_Union[SpaceConfig, _Mapping]] = ...) -> None: ...

class ConfigureSpaceResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: SpaceConfig
    def __init__(self, config: _Optional[_Union[SpaceConfig, _Mapping]] = ...) -> None: ...

class GetSpaceRequest(_message.Message):
    __slots__ = ("space",)
    SPACE_FIELD_NUMBER: _ClassVar[int]
    space: str
    def __init__(self, space: _Optional[str] = ...) -> None: ...

class GetSpaceResponse(_message.Message):
    __slots__ = ("space",)
    SPACE_FIELD_NUMBER: _ClassVar[int]
    space: SpaceInfo
    def __init__(self, space: _Optional[_Union[SpaceInfo, _Mapping]] = ...) -> None: ...

class GetSegmentRequest(_message.Message):
    __slots__ = ("space", "segment")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    space: str
    segment: str
    def __init__(self, space: _Optional[str] = ..., segment: _Optional[str] = ...) -> None: ...

class GetSegmentResponse(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentInfo
    def __init__(self, segment: _Optional[_Union[SegmentInfo, _Mapping]] = ...) -> None: ...

class WatchSegmentsRequest(_message.Message):
    __slots__ = ("space", "prefix")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    space: str
    prefix: str
    def __init__(self, space: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class WatchSegmentsResponse(_message.Message):
    __slots__ = ("segments", "snapshot_complete", "deleted")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    snapshot_complete: bool
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, segments: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., snapshot_complete: _Optional[bool] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("name", "space", "ordering", "from_offset", "from_timestamp", "from_end", "ack_timeout", "max_attempts", "dead_letter_space", "dead_letter_segment")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    ORDERING_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    FROM_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    FROM_END_FIELD_NUMBER: _ClassVar[int]
    ACK_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_SPACE_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    space: str
    ordering: Ordering
    from_offset: int
    from_timestamp: _timestamp_pb2.Timestamp
    from_end: bool
    ack_timeout: _duration_pb2.Duration
    max_attempts: int
    dead_letter_space: str
    dead_letter_segment: str
    def __init__(self, name: _Optional[str] = ..., space: _Optional[str] = ..., ordering: _Optional[_Union[Ordering, str]] = ..., from_offset: _Optional[int] = ..., from_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., from_end: _Optional[bool] = ..., ack_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_attempts: _Optional[int] = ..., dead_letter_space: _Optional[str] = ..., dead_letter_segment: _Optional[str] = ...) -> None: ...

class CreateGroupRequest(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: Group
    def __init__(self, group: _Optional[_Union[Group, _Mapping]] = ...) -> None: ...

class CreateGroupResponse(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: Group
    def __init__(self, group: _Optional[_Union[Group, _Mapping]] = ...) -> None: ...

class GetGroupRequest(_message.Message):
    __slots__ = ("space", "group")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    space: str
    group: str
    def __init__(self, space: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class GetGroupResponse(_message.Message):
    __slots__ = ("group", "info")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    group: Group
    info: GroupInfo
    def __init__(self, group: _Optional[_Union[Group, _Mapping]] = ..., info: _Optional[_Union[GroupInfo, _Mapping]] = ...) -> None: ...

class GroupInfo(_message.Message):
    __slots__ = ("acked_through", "last_position", "in_flight", "parked", "members")
    ACKED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    PARKED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    acked_through: int
    last_position: int
    in_flight: int
    parked: int
    members: _containers.RepeatedCompositeFieldContainer[GroupMember]
    def __init__(self, acked_through: _Optional[int] = ..., last_position: _Optional[int] = ..., in_flight: _Optional[int] = ..., parked: _Optional[int] = ..., members: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ...) -> None: ...

class GroupMember(_message.Message):
    __slots__ = ("id", "name", "segments", "in_flight")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    segments: int
    in_flight: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., segments: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...

class ListGroupsRequest(_message.Message):
    __slots__ = ("space", "page_size", "page_token")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    space: str
    page_size: int
    page_token: str
    def __init__(self, space: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGroupsResponse(_message.Message):
    __slots__ = ("groups", "next_page_token")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    next_page_token: str
    def __init__(self, groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteGroupRequest(_message.Message):
    __slots__ = ("space", "group")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    space: str
    group: str
    def __init__(self, space: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class DeleteGroupResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("join", "ack", "nack")
    JOIN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    join: SubscribeJoin
    ack: SubscribeAck
    nack: SubscribeNack
    def __init__(self, join: _Optional[_Union[SubscribeJoin, _Mapping]] = ..., ack: _Optional[_Union[SubscribeAck, _Mapping]] = ..., nack: _Optional[_Union[SubscribeNack, _Mapping]] = ...) -> None: ...

class SubscribeJoin(_message.Message):
    __slots__ = ("space", "group", "member_name", "max_in_flight")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MEMBER_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    space: str
    group: str
    member_name: str
    max_in_flight: int
    def __init__(self, space: _Optional[str] = ..., group: _Optional[str] = ..., member_name: _Optional[str] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class SubscribeAck(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, positions: _Optional[_Iterable[int]] = ...) -> None: ...

class SubscribeNack(_message.Message):
    __slots__ = ("positions", "action", "reason")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    action: NackAction
    reason: str
    def __init__(self, positions: _Optional[_Iterable[int]] = ..., action: _Optional[_Union[NackAction, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("joined", "deliveries")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    joined: SubscribeJoined
    deliveries: SubscribeDeliveries
    def __init__(self, joined: _Optional[_Union[SubscribeJoined, _Mapping]] = ..., deliveries: _Optional[_Union[SubscribeDeliveries, _Mapping]] = ...) -> None: ...

class SubscribeJoined(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    def __init__(self, member_id: _Optional[str] = ...) -> None: ...

class SubscribeDeliveries(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("record", "attempt")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    record: Record
    attempt: int
    def __init__(self, record: _Optional[_Union[Record, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...
