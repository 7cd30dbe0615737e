"""The wire form of the catalog: SpaceInfo, SegmentInfo and SpaceConfig as
ListSpaces, ListSegments, GetSpace, GetSegment and WatchSegments send them."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from streams import codec
from streams.model import SegmentInfo, SpaceConfig, SpaceInfo
from streams.v1 import streams_pb2 as pb


def space_info(info: SpaceInfo) -> pb.SpaceInfo:
    message = pb.SpaceInfo(
        name=info.name,
        last_position=info.last_position,
        last_timestamp=codec.timestamp(info.last_timestamp_ns),
        first_position=info.first_position,
        record_count=info.record_count,
        bytes=info.bytes,
    )
    if info.config is not None:
        message.config.CopyFrom(space_config(info.config))
    return message


def segment_info(info: SegmentInfo) -> pb.SegmentInfo:
    return pb.SegmentInfo(
        name=info.name,
        last_sequence=info.last_sequence,
        last_position=info.last_position,
        last_timestamp=codec.timestamp(info.last_timestamp_ns),
        first_sequence=info.first_sequence,
        record_count=info.record_count,
        bytes=info.bytes,
    )


def space_config(config: SpaceConfig) -> pb.SpaceConfig:
    """A stored config as the client sent it (retention unset: the defaults apply)."""
    message = pb.SpaceConfig()
    policy = config.retention
    if policy is not None:
        message.retention.SetInParent()
        if policy.max_age_ns:
            seconds, nanos = divmod(policy.max_age_ns, codec.NANOS)
            message.retention.max_age.CopyFrom(Duration(seconds=seconds, nanos=nanos))
        message.retention.max_records_per_segment = policy.max_records_per_segment
        message.retention.max_bytes = policy.max_bytes
    return message
