"""DeleteSegment and DeleteSpace (contract additions, "rpc DeleteSegment / rpc
DeleteSpace", "Numbers after deletion", "Reserved names"): every record goes,
the target leaves the lists, its offsets go, numbering is kept, deleting is
idempotent, and `$` names may be deleted."""

from __future__ import annotations

import grpc
import pytest

from streams.v1 import streams_pb2 as pb

from .helpers import (
    Stub,
    assert_status,
    consume_all,
    payloads_of,
    positions,
    produce,
    seqs,
    unique,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def delete_segment(stub: Stub, space: str, segment: str, expected: int | None = None) -> None:
    request = pb.DeleteSegmentRequest(space=space, segment=segment)
    if expected is not None:
        request.expected_sequence = expected
    stub.DeleteSegment(request)


def segment_names(stub: Stub, space: str) -> list[str]:
    return [s.name for s in stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments]


def space_names(stub: Stub, prefix: str) -> list[str]:
    names, token = [], ""
    while True:
        page = stub.ListSpaces(pb.ListSpacesRequest(page_size=1000, page_token=token))
        names += [s.name for s in page.spaces if s.name.startswith(prefix)]
        token = page.next_page_token
        if not token:
            return names


@pytest.fixture
def filled(stub: Stub, space: str) -> str:
    """Positions: 1 a1, 2 b1, 3 a2, 4 b2 (segments a and b, two records each)."""
    for segment, payload in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2")]:
        produce(stub, space, segment, [payload])
    return space


def test_delete_segment_removes_its_records_and_name(stub: Stub, filled: str) -> None:
    delete_segment(stub, filled, "a")
    assert consume_all(stub, filled, "a") == []
    assert segment_names(stub, filled) == ["b"]
    # The space read skips the removed records: its positions jump.
    assert positions(consume_all(stub, filled)) == [2, 4]
    get = pb.GetSegmentRequest(space=filled, segment="a")
    assert_status(lambda: stub.GetSegment(get), NOT_FOUND, "segment")
    trim = pb.TrimRequest(space=filled, segment="a", before_offset=1)
    assert_status(lambda: stub.Trim(trim), NOT_FOUND)
    assert_status(lambda: stub.Peek(pb.PeekRequest(space=filled, segment="a")), NOT_FOUND)
    info = stub.GetSpace(pb.GetSpaceRequest(space=filled)).space
    assert (info.record_count, info.last_position) == (2, 4)


def test_delete_segment_keeps_numbering(stub: Stub, filled: str) -> None:
    delete_segment(stub, filled, "a")
    # expected_sequence compares with the last sequence ever assigned (2), not 0.
    assert_status(
        lambda: produce(stub, filled, "a", [b"again"], expected_sequence=0),
        grpc.StatusCode.FAILED_PRECONDITION,
        "expected_sequence",
    )
    ack = produce(stub, filled, "a", [b"a3"], expected_sequence=2)
    assert (ack.acks[0].first_sequence, ack.first_position) == (3, 5)
    assert seqs(consume_all(stub, filled, "a")) == [3]
    assert segment_names(stub, filled) == ["a", "b"]
    info = stub.GetSegment(pb.GetSegmentRequest(space=filled, segment="a")).segment
    assert (info.first_sequence, info.last_sequence, info.record_count) == (3, 3, 1)


def test_delete_segment_with_expected_sequence(stub: Stub, filled: str) -> None:
    err = assert_status(
        lambda: delete_segment(stub, filled, "a", expected=1),
        grpc.StatusCode.FAILED_PRECONDITION,
        "expected_sequence",
    )
    assert ("streams-actual", "2") in tuple(err.trailing_metadata() or ())
    # The request's own field, not Produce's `writes.expected_sequence`.
    assert "writes." not in (err.details() or "")
    assert payloads_of(consume_all(stub, filled, "a")) == [b"a1", b"a2"]
    delete_segment(stub, filled, "a", expected=2)
    assert consume_all(stub, filled, "a") == []


def test_delete_segment_is_idempotent(stub: Stub, filled: str) -> None:
    delete_segment(stub, filled, "a")
    delete_segment(stub, filled, "a")
    delete_segment(stub, filled, "never")
    delete_segment(stub, unique("never"), "a")
    assert segment_names(stub, filled) == ["b"]


def test_delete_segment_removes_its_offsets_only(stub: Stub, filled: str) -> None:
    for segment in ("a", "b", ""):
        stub.Commit(pb.CommitRequest(consumer="c", space=filled, segment=segment, offset=1))
    delete_segment(stub, filled, "a")
    get = pb.GetOffsetRequest(consumer="c", space=filled, segment="a")
    assert_status(lambda: stub.GetOffset(get), NOT_FOUND, "consumer")
    for segment in ("b", ""):
        get = pb.GetOffsetRequest(consumer="c", space=filled, segment=segment)
        assert stub.GetOffset(get).offset == 1


def test_a_commit_to_a_deleted_target_is_not_found_until_it_is_written_again(
    stub: Stub, filled: str
) -> None:
    delete_segment(stub, filled, "a")
    commit = pb.CommitRequest(consumer="c", space=filled, segment="a", offset=1)
    # A delete removes the target's offsets; a commit must not bring one back.
    assert_status(lambda: stub.Commit(commit), NOT_FOUND, "deleted")
    produce(stub, filled, "a", ["a3"])
    assert stub.Commit(commit).offset == 1
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=filled))
    for segment in ("", "b"):
        request = pb.CommitRequest(consumer="c", space=filled, segment=segment, offset=1)
        assert_status(lambda request=request: stub.Commit(request), NOT_FOUND, "deleted")


def test_delete_space_removes_everything(stub: Stub, filled: str) -> None:
    for segment in ("a", ""):
        stub.Commit(pb.CommitRequest(consumer="c", space=filled, segment=segment, offset=1))
    stub.ConfigureSpace(pb.ConfigureSpaceRequest(space=filled, config=pb.SpaceConfig()))
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=filled))
    assert consume_all(stub, filled) == []
    assert consume_all(stub, filled, "b") == []
    assert segment_names(stub, filled) == []
    assert space_names(stub, filled) == []
    assert_status(lambda: stub.GetSpace(pb.GetSpaceRequest(space=filled)), NOT_FOUND, "space")
    assert_status(lambda: stub.Peek(pb.PeekRequest(space=filled)), NOT_FOUND)
    trim = pb.TrimRequest(space=filled, before_offset=1)
    assert_status(lambda: stub.Trim(trim), NOT_FOUND)
    for segment in ("a", ""):
        get = pb.GetOffsetRequest(consumer="c", space=filled, segment=segment)
        assert_status(lambda get=get: stub.GetOffset(get), NOT_FOUND)


def test_delete_space_keeps_numbering(stub: Stub, filled: str) -> None:
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=filled))
    ack = produce(stub, filled, "b", [b"b3"], expected_sequence=2)
    assert (ack.acks[0].first_sequence, ack.first_position) == (3, 5)
    assert positions(consume_all(stub, filled)) == [5]
    info = stub.GetSpace(pb.GetSpaceRequest(space=filled)).space
    assert (info.first_position, info.last_position, info.record_count) == (5, 5, 1)
    assert not info.HasField("config")
    assert segment_names(stub, filled) == ["b"]


def test_delete_space_is_idempotent(stub: Stub, filled: str) -> None:
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=filled))
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=filled))
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=unique("never")))


def test_delete_space_leaves_spaces_it_prefixes(stub: Stub, filled: str) -> None:
    produce(stub, filled + "/x", "a", [b"kept"])
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=filled))
    assert payloads_of(consume_all(stub, filled + "/x")) == [b"kept"]


def test_delete_space_of_a_configured_space_without_records(stub: Stub, space: str) -> None:
    stub.ConfigureSpace(pb.ConfigureSpaceRequest(space=space, config=pb.SpaceConfig()))
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=space))
    assert_status(lambda: stub.GetSpace(pb.GetSpaceRequest(space=space)), NOT_FOUND)


@pytest.mark.parametrize("reserved", ["$", "$parked"])
def test_deletes_of_reserved_names_are_allowed(stub: Stub, reserved: str) -> None:
    stub.DeleteSegment(pb.DeleteSegmentRequest(space=reserved, segment=reserved))
    stub.DeleteSegment(pb.DeleteSegmentRequest(space=unique("s"), segment=reserved))
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=reserved))


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.DeleteSegment(pb.DeleteSegmentRequest(space="", segment="a")),
        lambda stub: stub.DeleteSegment(pb.DeleteSegmentRequest(space="s", segment="")),
        lambda stub: stub.DeleteSegment(pb.DeleteSegmentRequest(space="s", segment="a\x00")),
        lambda stub: stub.DeleteSpace(pb.DeleteSpaceRequest(space="")),
        lambda stub: stub.DeleteSpace(pb.DeleteSpaceRequest(space="x" * 256)),
    ],
    ids=["empty space", "empty segment", "nul in segment", "empty space 2", "long space"],
)
def test_delete_with_a_bad_name_is_invalid(stub: Stub, call: object) -> None:
    assert_status(lambda: call(stub), grpc.StatusCode.INVALID_ARGUMENT, ("space", "segment"))
