"""Commit and GetOffset: consumer offsets stored on the server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from streams.v1 import streams_pb2 as pb

from .helpers import Stub, assert_status, produce, produce_writes, unique, write

FP = grpc.StatusCode.FAILED_PRECONDITION
OOR = grpc.StatusCode.OUT_OF_RANGE
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def commit(
    stub: Stub,
    consumer: str,
    space: str,
    segment: str,
    offset: int,
    expected_offset: int | None = None,
) -> int:
    req = pb.CommitRequest(consumer=consumer, space=space, segment=segment, offset=offset)
    if expected_offset is not None:
        req.expected_offset = expected_offset
    return stub.Commit(req).offset


def get(stub: Stub, consumer: str, space: str, segment: str = "") -> int:
    return stub.GetOffset(
        pb.GetOffsetRequest(consumer=consumer, space=space, segment=segment)
    ).offset


@pytest.fixture
def consumer() -> str:
    return unique("consumer")


@pytest.fixture
def two_segments(stub: Stub, space: str) -> None:
    """Segment a: 3 records; segment b: 6 records; space: 9 positions."""
    produce(stub, space, "a", [b"1"] * 3)
    produce(stub, space, "b", [b"1"] * 6)


@pytest.mark.parametrize("segment", ["a", ""])
def test_commit_and_read_back(
    stub: Stub, space: str, consumer: str, two_segments: None, segment: str
) -> None:
    assert commit(stub, consumer, space, segment, 2) == 2
    assert get(stub, consumer, space, segment) == 2
    assert commit(stub, consumer, space, segment, 3) == 3
    assert get(stub, consumer, space, segment) == 3


def test_rewind_allowed(stub: Stub, space: str, consumer: str, two_segments: None) -> None:
    assert commit(stub, consumer, space, "b", 6) == 6
    assert commit(stub, consumer, space, "b", 2) == 2
    assert get(stub, consumer, space, "b") == 2
    assert commit(stub, consumer, space, "", 9) == 9
    assert commit(stub, consumer, space, "", 1) == 1
    assert get(stub, consumer, space) == 1


def test_offset_zero_is_stored(stub: Stub, space: str, consumer: str, two_segments: None) -> None:
    assert commit(stub, consumer, space, "a", 0) == 0
    assert get(stub, consumer, space, "a") == 0
    commit(stub, consumer, space, "a", 2)
    assert commit(stub, consumer, space, "a", 0) == 0
    assert get(stub, consumer, space, "a") == 0


def test_offset_zero_on_unknown_target_is_not_out_of_range(stub: Stub, consumer: str) -> None:
    other = unique("nospace")
    assert commit(stub, consumer, other, "seg", 0) == 0
    assert get(stub, consumer, other, "seg") == 0
    assert commit(stub, consumer, other, "", 0) == 0
    assert get(stub, consumer, other) == 0


def test_get_offset_never_committed(
    stub: Stub, space: str, consumer: str, two_segments: None
) -> None:
    assert_status(lambda: get(stub, consumer, space, "a"), NOT_FOUND)
    assert_status(lambda: get(stub, consumer, space), NOT_FOUND)
    assert_status(lambda: get(stub, consumer, unique("nospace"), "a"), NOT_FOUND)


def test_offsets_independent_per_consumer_and_target(
    stub: Stub, space: str, two_segments: None
) -> None:
    c1, c2 = unique("c"), unique("c")
    commit(stub, c1, space, "a", 1)
    commit(stub, c1, space, "b", 5)
    commit(stub, c1, space, "", 8)
    commit(stub, c2, space, "a", 3)
    assert get(stub, c1, space, "a") == 1
    assert get(stub, c1, space, "b") == 5
    assert get(stub, c1, space) == 8
    assert get(stub, c2, space, "a") == 3
    assert_status(lambda: get(stub, c2, space, "b"), NOT_FOUND)
    assert_status(lambda: get(stub, c2, space), NOT_FOUND)
    # Same consumer and segment name in another space.
    other = unique("space")
    produce(stub, other, "a", [b"1"] * 3)
    assert_status(lambda: get(stub, c1, other, "a"), NOT_FOUND)
    commit(stub, c1, other, "a", 2)
    assert get(stub, c1, space, "a") == 1


def test_offsets_prefix_safe(stub: Stub, consumer: str) -> None:
    s = unique("s")
    produce_writes(stub, s, [write("a", [b"1"] * 5), write("ab", [b"1"] * 5)])
    produce(stub, s + "1", "a", [b"1"] * 5)
    commit(stub, consumer, s, "a", 4)
    commit(stub, consumer + "x", s, "ab", 2)
    assert_status(lambda: get(stub, consumer, s, "ab"), NOT_FOUND)
    assert_status(lambda: get(stub, consumer, s + "1", "a"), NOT_FOUND)
    assert_status(lambda: get(stub, consumer + "x", s, "a"), NOT_FOUND)
    assert_status(lambda: get(stub, consumer, s), NOT_FOUND)


def test_expected_offset_matches(stub: Stub, space: str, consumer: str, two_segments: None) -> None:
    # 0 matches "none stored".
    assert commit(stub, consumer, space, "b", 2, expected_offset=0) == 2
    assert commit(stub, consumer, space, "b", 4, expected_offset=2) == 4
    assert commit(stub, consumer, space, "b", 0, expected_offset=4) == 0
    # 0 matches a stored 0.
    assert commit(stub, consumer, space, "b", 5, expected_offset=0) == 5
    assert get(stub, consumer, space, "b") == 5


def test_expected_offset_mismatch(
    stub: Stub, space: str, consumer: str, two_segments: None
) -> None:
    commit(stub, consumer, space, "b", 5)
    for wrong in (0, 4, 6):
        assert_status(
            lambda wrong=wrong: commit(stub, consumer, space, "b", 6, expected_offset=wrong),
            FP,
            "5",
        )
    assert get(stub, consumer, space, "b") == 5
    # Space level, and nothing stored yet: any non-zero expectation fails.
    assert_status(lambda: commit(stub, consumer, space, "", 1, expected_offset=3), FP)
    assert_status(lambda: get(stub, consumer, space), NOT_FOUND)
    commit(stub, consumer, space, "", 7)
    assert_status(lambda: commit(stub, consumer, space, "", 1, expected_offset=8), FP, "7")
    assert get(stub, consumer, space) == 7


def test_expected_offset_one_winner(
    stub: Stub, space: str, consumer: str, two_segments: None
) -> None:
    def attempt(i: int) -> grpc.StatusCode:
        try:
            commit(stub, consumer, space, "b", 1 + i % 6, expected_offset=0)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(FP) == 15


def test_commit_past_last_offset_segment(
    stub: Stub, space: str, consumer: str, two_segments: None
) -> None:
    assert commit(stub, consumer, space, "a", 3) == 3
    # a has 3 records although the space has 9 positions: the offset is a sequence.
    for past in (4, 9, 2**63):
        assert_status(lambda past=past: commit(stub, consumer, space, "a", past), OOR)
    assert get(stub, consumer, space, "a") == 3
    assert_status(lambda: commit(stub, consumer, space, "nosuchsegment", 1), OOR)
    assert_status(lambda: commit(stub, consumer, unique("nospace"), "a", 1), OOR)


def test_commit_past_last_offset_space(
    stub: Stub, space: str, consumer: str, two_segments: None
) -> None:
    assert commit(stub, consumer, space, "", 9) == 9
    assert_status(lambda: commit(stub, consumer, space, "", 10), OOR)
    assert get(stub, consumer, space) == 9
    assert_status(lambda: commit(stub, unique("c"), space, "", 10), OOR)
    assert_status(lambda: commit(stub, consumer, unique("nospace"), "", 1), OOR)
    produce(stub, space, "a", [b"x"])
    assert commit(stub, consumer, space, "", 10) == 10
    assert commit(stub, consumer, space, "a", 4) == 4


def test_error_messages_name_field_and_value(
    stub: Stub, space: str, consumer: str, two_segments: None
) -> None:
    assert_status(lambda: commit(stub, consumer, space, "a", 4), OOR, "offset", "4")
    assert_status(lambda: commit(stub, consumer, space, "", 12), OOR, "offset", "12")
    commit(stub, consumer, space, "b", 5)
    assert_status(
        lambda: commit(stub, consumer, space, "b", 1, expected_offset=3),
        FP,
        "expected_offset",
        "3",
        "5",
    )
    assert_status(lambda: get(stub, consumer, space, "a"), NOT_FOUND, consumer)
