"""Consume `segment_prefix` (contract additions, "Consume: start offset and segment
filter"): a space read of only the segments whose name starts with the prefix;
positions still ascend, with gaps where other segments' records were skipped."""

from __future__ import annotations

import threading

import grpc
import pytest

from streams.v1 import streams_pb2 as pb

from .helpers import (
    BAD_NONEMPTY_NAMES,
    MIB,
    Stub,
    assert_status,
    consume_all,
    consume_responses,
    payloads_of,
    positions,
    produce,
    produce_writes,
    write,
)

SEGMENTS = ("orders/eu", "refunds/eu", "orders/us", "orders", "ordersX", "é/1", "é/2")


@pytest.fixture
def filled(stub: Stub, space: str) -> list[pb.Record]:
    """Each segment written twice, in turns, plus one transaction over three
    segments; returns the whole space as read."""
    for turn in range(2):
        for segment in SEGMENTS:
            produce(stub, space, segment, [f"{segment}:{turn}:{i}" for i in range(turn + 1)])
    produce_writes(
        stub,
        space,
        [write("refunds/eu", [b"mixed r"]), write("orders/eu", [b"mixed o"]), write("é/1", [b"x"])],
    )
    return consume_all(stub, space)


def matching(records: list[pb.Record], prefix: str) -> list[pb.Record]:
    return [r for r in records if r.segment.startswith(prefix)]


@pytest.mark.parametrize("prefix", ["orders/", "orders", "ordersX", "é", "é/2", "refunds/eu"])
def test_only_matching_segments_in_position_order(
    stub: Stub, space: str, filled: list[pb.Record], prefix: str
) -> None:
    got = consume_all(stub, space, segment_prefix=prefix)
    want = matching(filled, prefix)
    assert want, "the fixture must hold records of each prefix"
    assert got == want
    assert positions(got) == sorted(positions(got))
    assert {r.segment for r in got} == {s for s in SEGMENTS if s.startswith(prefix)}


def test_skipped_records_leave_gaps_in_positions(
    stub: Stub, space: str, filled: list[pb.Record]
) -> None:
    got = positions(consume_all(stub, space, segment_prefix="refunds/"))
    assert len(got) >= 3
    assert got != list(range(got[0], got[0] + len(got))), "other segments lie between"


def test_a_transaction_over_several_segments_is_cut_to_the_matching_ones(
    stub: Stub, space: str, filled: list[pb.Record]
) -> None:
    last = consume_all(stub, space, segment_prefix="orders/")[-1]
    assert (last.segment, last.payload) == ("orders/eu", b"mixed o")
    assert last.position == filled[-2].position


def test_empty_prefix_and_no_match(stub: Stub, space: str, filled: list[pb.Record]) -> None:
    assert consume_all(stub, space, segment_prefix="") == filled
    assert consume_responses(stub, space, segment_prefix="nothing/") == []
    # A prefix longer than every name.
    assert consume_responses(stub, space, segment_prefix="orders/eu/and more") == []


def test_bounds_limit_and_batches_count_matching_records(
    stub: Stub, space: str, filled: list[pb.Record]
) -> None:
    want = matching(filled, "orders/")
    middle = want[2].position
    got = consume_all(stub, space, segment_prefix="orders/", from_offset=middle)
    assert got == [r for r in want if r.position >= middle]
    got = consume_all(stub, space, segment_prefix="orders/", to_offset=middle)
    assert got == [r for r in want if r.position <= middle]
    assert consume_all(stub, space, segment_prefix="orders/", limit=3) == want[:3]
    responses = consume_responses(stub, space, segment_prefix="orders/", max_batch=2)
    assert [len(response.records) for response in responses][:-1] == [2] * (len(responses) - 1)
    assert [r for response in responses for r in response.records] == want


def test_with_a_segment_it_is_invalid_argument(stub: Stub, space: str) -> None:
    produce(stub, space, "orders/eu")
    assert_status(
        lambda: consume_all(stub, space, "orders/eu", segment_prefix="orders/"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "segment_prefix",
    )


@pytest.mark.parametrize("bad", sorted(BAD_NONEMPTY_NAMES))
def test_a_prefix_no_name_could_start_with_is_invalid_argument(
    stub: Stub, space: str, bad: str
) -> None:
    assert_status(
        lambda: consume_all(stub, space, segment_prefix=BAD_NONEMPTY_NAMES[bad]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "segment_prefix",
    )


def test_a_long_stretch_of_other_segments_is_skipped(stub: Stub, space: str) -> None:
    """More of other segments than one step skips (4 MiB by default) between two
    matching records: the read goes on and finds the second."""
    produce(stub, space, "wanted", [b"first"])
    for _ in range(6):
        produce(stub, space, "other", [bytes(900_000)])
    produce(stub, space, "wanted", [b"second"])
    got = consume_all(stub, space, segment_prefix="want")
    assert (payloads_of(got), positions(got)) == ([b"first", b"second"], [1, 8])


def test_follow_delivers_each_matching_record_once_in_order(stub: Stub, space: str) -> None:
    """A follower of a prefix, started before the writes and running through them:
    stored records first, then live ones, none missed or repeated, none of other
    segments; it keeps up across long stretches of other segments."""
    produce(stub, space, "orders/eu", [b"stored"])
    produce(stub, space, "refunds/eu", [b"stored"])
    total = 300
    call = stub.Consume(
        pb.ConsumeRequest(space=space, segment_prefix="orders/", follow=True, limit=total),
        timeout=60,
    )
    assert dict(call.initial_metadata())["streams-start"] == "1"

    def writer() -> None:
        n = 1  # one orders/ record is stored already
        turn = 0
        while n < total:
            turn += 1
            if turn % 50 == 0:  # now and then a long stretch of others
                produce(stub, space, "refunds/big", [bytes(500_000)] * 3)
            writes = [write("refunds/eu", [b"r"])]
            if turn % 3:
                writes.append(write(f"orders/{'eu' if turn % 2 else 'us'}", [f"o{n}".encode()]))
                n += 1
            produce_writes(stub, space, writes)

    thread = threading.Thread(target=writer)
    thread.start()
    got = [r for response in call for r in response.records]
    thread.join()
    stored = matching(consume_all(stub, space), "orders/")
    assert got == stored[:total]
    assert [r.payload for r in got[1:]] == [f"o{n}".encode() for n in range(1, total)]


def test_follow_from_end_of_a_prefix(stub: Stub, space: str) -> None:
    produce(stub, space, "orders/eu", [b"old"])
    call = stub.Consume(
        pb.ConsumeRequest(space=space, segment_prefix="orders/", from_end=True, follow=True),
        timeout=30,
    )
    assert dict(call.initial_metadata())["streams-start"] == "2"
    produce(stub, space, "refunds/eu", [b"not this"] * 3)
    produce(stub, space, "orders/us", [b"new"])
    response = next(call)
    call.cancel()
    assert [(r.segment, r.payload, r.position) for r in response.records] == [
        ("orders/us", b"new", 5)
    ]


def test_large_records_of_a_prefix_stay_under_the_response_limit(stub: Stub, space: str) -> None:
    for _ in range(3):
        produce(stub, space, "big/a", [bytes(MIB - 4096)] * 2)
        produce(stub, space, "small", [b"s"])
    responses = consume_responses(stub, space, segment_prefix="big/")
    assert sum(len(response.records) for response in responses) == 6
    assert all(response.ByteSize() < 4 * MIB for response in responses)
