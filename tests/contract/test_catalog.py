"""ConfigureSpace, GetSpace, GetSegment and the new SpaceInfo/SegmentInfo fields
(contract additions, "Retention: rpc ConfigureSpace" and "Catalog"), and
retention enforced by the background pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from streams.v1 import streams_pb2 as pb
from tests.support.process import ServerProcess
from tests.support.waiting import wait_until

from .helpers import Stub, assert_status, consume_all, produce, rec, seqs, unique
from .launch import Launcher

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def configure(stub: Stub, space: str, config: pb.SpaceConfig) -> pb.SpaceConfig:
    return stub.ConfigureSpace(pb.ConfigureSpaceRequest(space=space, config=config)).config


def get_space(stub: Stub, space: str) -> pb.SpaceInfo:
    return stub.GetSpace(pb.GetSpaceRequest(space=space)).space


def size(*payloads: bytes | pb.RecordInput) -> int:
    """What SpaceInfo/SegmentInfo ``bytes`` count for these records."""
    return sum(
        len((p if isinstance(p, pb.RecordInput) else rec(p)).SerializeToString()) for p in payloads
    )


# -- GetSpace / GetSegment and the lists ------------------------------------


def test_infos_count_records_and_bytes(stub: Stub, space: str) -> None:
    meta = rec(b"with metadata", {"k": "v" * 10})
    a = produce(stub, space, "a", [b"a1", meta])
    produce(stub, space, "b", [b"b1"])
    info = get_space(stub, space)
    assert (info.name, info.first_position, info.last_position) == (space, 1, 3)
    assert (info.record_count, info.bytes) == (3, size(b"a1", meta, b"b1"))
    assert not info.HasField("config")
    segment = stub.GetSegment(pb.GetSegmentRequest(space=space, segment="a")).segment
    assert (segment.name, segment.first_sequence, segment.last_sequence) == ("a", 1, 2)
    assert (segment.record_count, segment.bytes) == (2, size(b"a1", meta))
    assert (segment.last_position, segment.last_timestamp) == (2, a.timestamp)


def test_lists_carry_the_same_infos(stub: Stub, space: str) -> None:
    produce(stub, space, "a", [b"a1", b"a2"])
    produce(stub, space, "b", [b"b1"])
    stub.Trim(pb.TrimRequest(space=space, segment="a", before_offset=2))
    configure(stub, space, pb.SpaceConfig(retention=pb.RetentionPolicy(max_bytes=10**9)))
    listed = stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments
    for info in listed:
        got = stub.GetSegment(pb.GetSegmentRequest(space=space, segment=info.name)).segment
        assert got == info
    assert [(s.name, s.first_sequence, s.record_count) for s in listed] == [
        ("a", 2, 1),
        ("b", 1, 1),
    ]
    found, token = [], ""
    while True:
        page = stub.ListSpaces(pb.ListSpacesRequest(page_size=1000, page_token=token))
        found += [s for s in page.spaces if s.name == space]
        token = page.next_page_token
        if not token:
            break
    assert found == [get_space(stub, space)]
    assert found[0].config.retention.max_bytes == 10**9


def test_get_space_unknown_is_not_found(stub: Stub) -> None:
    name = unique("none")
    assert_status(lambda: get_space(stub, name), NOT_FOUND, "space", name)


def test_get_segment_unknown_is_not_found(stub: Stub, space: str) -> None:
    produce(stub, space, "a")
    for s, seg in [(space, "b"), (unique("none"), "a"), (space, "a/")]:
        request = pb.GetSegmentRequest(space=s, segment=seg)
        assert_status(lambda request=request: stub.GetSegment(request), NOT_FOUND, "segment")


@pytest.mark.parametrize("rpc", ["GetSpace", "GetSegment"])
def test_get_with_bad_names_is_invalid(stub: Stub, rpc: str) -> None:
    if rpc == "GetSpace":
        assert_status(lambda: stub.GetSpace(pb.GetSpaceRequest(space="")), INVALID, "space")
    else:
        bad = pb.GetSegmentRequest(space="s", segment="a\x1f")
        assert_status(lambda: stub.GetSegment(bad), INVALID, "segment")


def test_reserved_names_can_be_read(stub: Stub) -> None:
    assert_status(lambda: get_space(stub, "$parked"), NOT_FOUND)
    request = pb.GetSegmentRequest(space="$parked", segment="$x")
    assert_status(lambda: stub.GetSegment(request), NOT_FOUND)


# -- ConfigureSpace -----------------------------------------------------------


def test_configure_before_any_record(stub: Stub, space: str) -> None:
    config = pb.SpaceConfig(retention=pb.RetentionPolicy(max_records_per_segment=7))
    assert configure(stub, space, config) == config
    info = get_space(stub, space)
    assert (info.first_position, info.last_position, info.record_count, info.bytes) == (1, 0, 0, 0)
    assert info.config == config
    assert stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments == []


def test_config_is_echoed_as_sent(stub: Stub, space: str) -> None:
    sent = pb.SpaceConfig(
        retention=pb.RetentionPolicy(
            max_age=Duration(seconds=3600, nanos=5), max_records_per_segment=3, max_bytes=1 << 40
        )
    )
    assert configure(stub, space, sent) == sent
    assert get_space(stub, space).config == sent
    # No retention: the server's default policy applies; nothing is filled in.
    assert configure(stub, space, pb.SpaceConfig()) == pb.SpaceConfig()
    assert not get_space(stub, space).config.HasField("retention")


def test_configure_replaces_the_config_whole(stub: Stub, space: str) -> None:
    configure(
        stub, space, pb.SpaceConfig(retention=pb.RetentionPolicy(max_age=Duration(seconds=9)))
    )
    second = pb.SpaceConfig(retention=pb.RetentionPolicy(max_bytes=100))
    configure(stub, space, second)
    assert get_space(stub, space).config == second


def test_configure_keeps_the_records(stub: Stub, space: str) -> None:
    produce(stub, space, "a", [b"1", b"2"])
    configure(stub, space, pb.SpaceConfig(retention=pb.RetentionPolicy(max_bytes=1 << 30)))
    assert seqs(consume_all(stub, space, "a")) == [1, 2]


@pytest.mark.parametrize(
    ("duration", "field"),
    [
        (Duration(seconds=-1), "max_age.seconds"),
        (Duration(seconds=1, nanos=-1), "max_age.nanos"),
        (Duration(nanos=1_000_000_000), "max_age.nanos"),
        (Duration(seconds=10**11), "max_age"),
    ],
    ids=["negative", "negative nanos", "nanos too big", "over 292 years"],
)
def test_bad_max_age_is_invalid(stub: Stub, space: str, duration: Duration, field: str) -> None:
    config = pb.SpaceConfig(retention=pb.RetentionPolicy(max_age=duration))
    assert_status(lambda: configure(stub, space, config), INVALID, f"config.retention.{field}")
    assert_status(lambda: get_space(stub, space), NOT_FOUND)


@pytest.mark.parametrize("reserved", ["$", "$parked"])
def test_configure_of_a_reserved_space_is_invalid(stub: Stub, reserved: str) -> None:
    assert_status(
        lambda: configure(stub, reserved, pb.SpaceConfig()), INVALID, "space", reserved, "reserved"
    )


# -- retention ----------------------------------------------------------------


@pytest.fixture
def fast_retention(tmp_path: Path, launch: Launcher) -> Iterator[ServerProcess]:
    """A server whose retention pass runs every 50 ms, with a default policy of
    3 records per segment."""
    flags = ("--retention-interval", "0.05", "--retention-max-records-per-segment", "3")
    with launch(tmp_path, *flags) as server:
        yield server


def first_sequence(stub: Stub, space: str, segment: str) -> int:
    return stub.GetSegment(
        pb.GetSegmentRequest(space=space, segment=segment)
    ).segment.first_sequence


def test_default_policy_is_enforced(fast_retention: ServerProcess) -> None:
    stub, space = fast_retention.stub, unique("space")
    produce(stub, space, "a", [str(i) for i in range(10)])
    wait_until(lambda: first_sequence(stub, space, "a") == 8, what="the default policy")
    assert seqs(consume_all(stub, space, "a")) == [8, 9, 10]


def test_space_policy_overrides_the_default(fast_retention: ServerProcess) -> None:
    stub, space = fast_retention.stub, unique("space")
    configure(stub, space, pb.SpaceConfig(retention=pb.RetentionPolicy(max_records_per_segment=5)))
    produce(stub, space, "a", [str(i) for i in range(10)])
    wait_until(lambda: first_sequence(stub, space, "a") == 6, what="the space's policy")
    # An explicit policy without limits keeps everything, whatever the default.
    kept = unique("space")
    configure(stub, kept, pb.SpaceConfig(retention=pb.RetentionPolicy()))
    produce(stub, kept, "a", [str(i) for i in range(10)])
    produce(stub, space, "a", [b"more"])
    wait_until(lambda: first_sequence(stub, space, "a") == 7, what="a later pass")
    assert first_sequence(stub, kept, "a") == 1


def test_max_bytes_and_max_age_are_enforced(fast_retention: ServerProcess) -> None:
    stub, space = fast_retention.stub, unique("space")
    payloads = [b"x" * 100] * 3
    each = size(payloads[0])
    configure(stub, space, pb.SpaceConfig(retention=pb.RetentionPolicy(max_bytes=2 * each)))
    produce(stub, space, "a", payloads[:2])
    produce(stub, space, "b", payloads[:1])
    wait_until(lambda: stub.GetSpace(pb.GetSpaceRequest(space=space)).space.first_position == 2)
    assert stub.GetSpace(pb.GetSpaceRequest(space=space)).space.bytes == 2 * each
    aged = unique("space")
    configure(stub, aged, pb.SpaceConfig(retention=pb.RetentionPolicy(max_age=Duration(nanos=1))))
    produce(stub, aged, "a", [b"old"])
    wait_until(lambda: first_sequence(stub, aged, "a") == 2, what="max_age")
    assert consume_all(stub, aged) == []
