"""Consume (stored records only; the live tail is tested elsewhere)."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streams.v1 import streams_pb2 as pb

from .helpers import (
    CLIENT_RECEIVE_LIMIT,
    MIB,
    Stub,
    assert_status,
    consume_all,
    consume_responses,
    payloads_of,
    positions,
    produce,
    produce_in_parts,
    produce_writes,
    rec,
    seqs,
    ts_key,
    ts_plus,
    unique,
    write,
)


@pytest.fixture
def filled(stub: Stub, space: str) -> list[pb.ProduceResponse]:
    """Space with segments a and b, written in 6 transactions, 10 records.

    positions: 1 a1, 2 a2, 3 b1, 4 a3, 5 b2, 6 b3, 7 a4, 8 b4, 9 a5, 10 b5
    """
    out = [
        produce(stub, space, "a", [b"a1", b"a2"]),
        produce(stub, space, "b", [b"b1"]),
        produce_writes(stub, space, [write("a", [b"a3"]), write("b", [b"b2", b"b3"])]),
        produce(stub, space, "a", [b"a4"]),
        produce(stub, space, "b", [b"b4"]),
        produce_writes(stub, space, [write("a", [b"a5"]), write("b", [b"b5"])]),
    ]
    return out


ALL = [b"a1", b"a2", b"b1", b"a3", b"b2", b"b3", b"a4", b"b4", b"a5", b"b5"]
SEG_A = [b"a1", b"a2", b"a3", b"a4", b"a5"]
SEG_B = [b"b1", b"b2", b"b3", b"b4", b"b5"]


def test_segment_read_by_sequence(stub: Stub, space: str, filled: list) -> None:
    recs = consume_all(stub, space, "a")
    assert payloads_of(recs) == SEG_A
    assert seqs(recs) == [1, 2, 3, 4, 5]
    assert positions(recs) == [1, 2, 4, 7, 9]
    assert {r.segment for r in recs} == {"a"}
    assert payloads_of(consume_all(stub, space, "b")) == SEG_B


def test_space_read_interleaves_by_position(stub: Stub, space: str, filled: list) -> None:
    recs = consume_all(stub, space)
    assert payloads_of(recs) == ALL
    assert positions(recs) == list(range(1, 11))
    assert [(r.segment, r.sequence) for r in recs][:4] == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]


def test_record_fields_all_set(stub: Stub, space: str) -> None:
    tid = unique("tx")
    record = rec(b"\x00payload", {"k": "v", "n": "1"})
    resp = produce(stub, space, "seg/1", [record], transaction_id=tid)
    for r in (consume_all(stub, space, "seg/1")[0], consume_all(stub, space)[0]):
        assert r.space == space
        assert r.segment == "seg/1"
        assert r.sequence == 1
        assert r.position == 1
        assert r.HasField("timestamp")
        assert ts_key(r.timestamp) == ts_key(resp.timestamp)
        assert r.payload == b"\x00payload"
        assert dict(r.metadata) == {"k": "v", "n": "1"}
        assert r.transaction_id == tid


@pytest.mark.parametrize("segment", ["", "a"])
def test_from_offset_zero_and_one_mean_first(
    stub: Stub, space: str, filled: list, segment: str
) -> None:
    expected = consume_all(stub, space, segment)
    assert len(expected) >= 5
    assert consume_all(stub, space, segment, from_offset=0) == expected
    assert consume_all(stub, space, segment, from_offset=1) == expected


def test_from_offset_inclusive(stub: Stub, space: str, filled: list) -> None:
    assert payloads_of(consume_all(stub, space, "a", from_offset=3)) == [b"a3", b"a4", b"a5"]
    assert payloads_of(consume_all(stub, space, "a", from_offset=5)) == [b"a5"]
    # Space level: an offset is a position.
    assert positions(consume_all(stub, space, from_offset=4)) == [4, 5, 6, 7, 8, 9, 10]
    assert payloads_of(consume_all(stub, space, from_offset=10)) == [b"b5"]


def test_from_offset_beyond_end_is_empty(stub: Stub, space: str, filled: list) -> None:
    assert consume_responses(stub, space, "a", from_offset=6) == []
    assert consume_responses(stub, space, "a", from_offset=10**12) == []
    assert consume_responses(stub, space, from_offset=11) == []
    assert consume_responses(stub, space, from_offset=2**64 - 1) == []


def test_unknown_space_or_segment_ends_without_records(stub: Stub, space: str) -> None:
    assert consume_responses(stub, unique("nospace")) == []
    assert consume_responses(stub, unique("nospace"), "seg") == []
    produce(stub, space, "a", [b"1"])
    assert consume_responses(stub, space, "nosuchsegment") == []
    assert consume_responses(stub, unique("nospace"), from_consumer="c") == []


@pytest.fixture
def timed(stub: Stub, space: str) -> list[pb.Record]:
    """Five transactions some milliseconds apart across two segments; all records."""
    for i in range(5):
        produce_writes(
            stub, space, [write("a", [f"a{i}".encode()]), write("b", [b"b"] * i or [b"b"])]
        )
        time.sleep(0.02)
    return consume_all(stub, space)


def _expect_from(recs: list[pb.Record], ts: Timestamp, segment: str = "") -> list[pb.Record]:
    return [r for r in recs if ts_key(r.timestamp) >= ts_key(ts) and segment in ("", r.segment)]


@pytest.mark.parametrize("segment", ["", "b"])
def test_from_timestamp_exact_and_between(
    stub: Stub, space: str, timed: list[pb.Record], segment: str
) -> None:
    stamps = sorted({ts_key(r.timestamp) for r in timed})
    assert len(stamps) >= 2, "transactions 20 ms apart should not share a timestamp"
    for r in timed:
        for ts in (r.timestamp, ts_plus(r.timestamp, 1), ts_plus(r.timestamp, -1)):
            want = _expect_from(timed, ts, segment)
            got = consume_all(stub, space, segment, from_timestamp=ts)
            assert got == want, (ts, segment)
    # The exact timestamp of a later transaction: starts at its first record.
    later = [r for r in timed if ts_key(r.timestamp) == stamps[-1]]
    got = consume_all(stub, space, from_timestamp=later[0].timestamp)
    assert got == later


def test_from_timestamp_before_all_and_after_all(
    stub: Stub, space: str, timed: list[pb.Record]
) -> None:
    first, last = timed[0].timestamp, timed[-1].timestamp
    assert consume_all(stub, space, from_timestamp=Timestamp(seconds=0)) == timed
    assert consume_all(stub, space, from_timestamp=Timestamp(seconds=-86_400)) == timed
    assert consume_responses(stub, space, from_timestamp=Timestamp(seconds=2**40)) == []
    assert consume_all(stub, space, from_timestamp=ts_plus(first, -3_600 * 10**9)) == timed
    assert consume_responses(stub, space, from_timestamp=ts_plus(last, 1)) == []
    assert consume_responses(stub, space, "a", from_timestamp=ts_plus(last, 10**9)) == []


def test_from_consumer(stub: Stub, space: str, filled: list) -> None:
    c = unique("consumer")
    # None committed: the first record.
    assert payloads_of(consume_all(stub, space, "a", from_consumer=c)) == SEG_A
    assert payloads_of(consume_all(stub, space, from_consumer=c)) == ALL
    stub.Commit(pb.CommitRequest(consumer=c, space=space, segment="a", offset=2))
    assert payloads_of(consume_all(stub, space, "a", from_consumer=c)) == [b"a3", b"a4", b"a5"]
    # The segment-level offset does not move the space-level target, nor segment b.
    assert payloads_of(consume_all(stub, space, from_consumer=c)) == ALL
    assert payloads_of(consume_all(stub, space, "b", from_consumer=c)) == SEG_B
    stub.Commit(pb.CommitRequest(consumer=c, space=space, offset=7))
    assert payloads_of(consume_all(stub, space, from_consumer=c)) == [b"b4", b"a5", b"b5"]
    assert payloads_of(consume_all(stub, space, "a", from_consumer=c)) == [b"a3", b"a4", b"a5"]
    # Another consumer is unaffected.
    assert payloads_of(consume_all(stub, space, "a", from_consumer=unique("c"))) == SEG_A


def test_from_consumer_offset_zero_and_at_end(stub: Stub, space: str, filled: list) -> None:
    c = unique("consumer")
    stub.Commit(pb.CommitRequest(consumer=c, space=space, segment="b", offset=0))
    assert payloads_of(consume_all(stub, space, "b", from_consumer=c)) == SEG_B
    stub.Commit(pb.CommitRequest(consumer=c, space=space, segment="b", offset=5))
    assert consume_responses(stub, space, "b", from_consumer=c) == []
    stub.Commit(pb.CommitRequest(consumer=c, space=space, offset=10))
    assert consume_responses(stub, space, from_consumer=c) == []


def test_to_offset_inclusive(stub: Stub, space: str, filled: list) -> None:
    assert payloads_of(consume_all(stub, space, "a", to_offset=3)) == [b"a1", b"a2", b"a3"]
    assert payloads_of(consume_all(stub, space, "a", from_offset=2, to_offset=2)) == [b"a2"]
    assert positions(consume_all(stub, space, from_offset=3, to_offset=6)) == [3, 4, 5, 6]
    assert payloads_of(consume_all(stub, space, "a", to_offset=0)) == SEG_A
    assert payloads_of(consume_all(stub, space, "a", to_offset=99)) == SEG_A
    assert consume_responses(stub, space, "a", from_offset=4, to_offset=3) == []


def test_bounds_may_cut_a_transaction(stub: Stub, space: str, filled: list) -> None:
    # Positions 5 and 6 are one transaction (b2, b3); to_offset may cut between them.
    assert payloads_of(consume_all(stub, space, from_offset=5, to_offset=5)) == [b"b2"]
    assert payloads_of(consume_all(stub, space, from_offset=4, limit=2)) == [b"a3", b"b2"]


def test_limit(stub: Stub, space: str, filled: list) -> None:
    assert payloads_of(consume_all(stub, space, limit=3)) == [b"a1", b"a2", b"b1"]
    assert payloads_of(consume_all(stub, space, "b", from_offset=2, limit=2)) == [b"b2", b"b3"]
    assert payloads_of(consume_all(stub, space, limit=0)) == ALL
    assert payloads_of(consume_all(stub, space, limit=100)) == ALL
    assert payloads_of(consume_all(stub, space, to_offset=8, limit=100)) == ALL[:8]
    assert payloads_of(consume_all(stub, space, to_offset=8, limit=2)) == ALL[:2]
    assert payloads_of(consume_all(stub, space, limit=1, max_batch=1)) == [b"a1"]


@pytest.mark.parametrize("max_batch", [1, 3, 7, 10_000])
def test_max_batch_respected(stub: Stub, space: str, max_batch: int) -> None:
    produce(stub, space, "s", [f"{i}".encode() for i in range(25)])
    for segment in ("", "s"):
        responses = consume_responses(stub, space, segment, max_batch=max_batch)
        sizes = [len(r.records) for r in responses]
        assert all(1 <= n <= max_batch for n in sizes), sizes
        assert sum(sizes) == 25
        assert len(responses) >= -(-25 // max_batch)
        got = [r for resp in responses for r in resp.records]
        assert seqs(got) == list(range(1, 26))


def test_max_batch_default_gives_nonempty_responses(stub: Stub, space: str) -> None:
    produce(stub, space, "s", [b"x"] * 300)
    responses = consume_responses(stub, space, max_batch=0)
    assert all(len(r.records) >= 1 for r in responses)
    assert positions([r for resp in responses for r in resp.records]) == list(range(1, 301))


def test_max_batch_over_limit_rejected(stub: Stub, space: str) -> None:
    produce(stub, space, "s")
    for segment in ("", "s"):
        assert_status(
            lambda segment=segment: consume_responses(stub, space, segment, max_batch=10_001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_batch",
            ("10001", "10,001", "10 001"),
        )
    assert_status(
        lambda: consume_responses(stub, unique("nospace"), max_batch=2**32 - 1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_batch",
    )


def test_responses_stay_under_4_mib(stub: Stub, space: str) -> None:
    payloads = [bytes([i]) * (MIB - 100) for i in range(10)]
    produce(stub, space, "big", payloads)
    for segment in ("", "big"):
        for max_batch in (0, 10, 10_000):
            # The client keeps its default 4 MiB receive limit: a bigger response fails here.
            responses = consume_responses(stub, space, segment, max_batch=max_batch)
            assert all(r.ByteSize() < CLIENT_RECEIVE_LIMIT for r in responses)
            assert len(responses) >= 3
            assert payloads_of(r for resp in responses for r in resp.records) == payloads


def test_responses_under_4_mib_with_many_small_records(stub: Stub, space: str) -> None:
    # 12 x 600 KiB would fit one response by max_batch (~7 MiB): it must be cut by size.
    payloads = [bytes([i]) * (600 * 1024) for i in range(12)]
    produce(stub, space, "s", payloads)
    responses = consume_responses(stub, space, "s", max_batch=100)
    assert all(r.ByteSize() < CLIENT_RECEIVE_LIMIT for r in responses)
    assert payloads_of(r for resp in responses for r in resp.records) == payloads


def test_prefix_safe_segments_and_spaces(stub: Stub) -> None:
    s = unique("s")
    s1 = s + "1"
    produce_writes(stub, s, [write("a", [b"s-a"]), write("ab", [b"s-ab"])])
    produce_writes(stub, s1, [write("a", [b"s1-a"]), write("b", [b"s1-b"])])
    assert payloads_of(consume_all(stub, s, "a")) == [b"s-a"]
    assert payloads_of(consume_all(stub, s, "ab")) == [b"s-ab"]
    assert payloads_of(consume_all(stub, s)) == [b"s-a", b"s-ab"]
    assert payloads_of(consume_all(stub, s1)) == [b"s1-a", b"s1-b"]
    assert payloads_of(consume_all(stub, s1, "a")) == [b"s1-a"]
    assert consume_all(stub, s, "b") == []
    # Separator-looking characters do not leak either.
    t = unique("t")
    produce_writes(stub, t, [write("x", [b"x"]), write("x/y", [b"xy"]), write("x:y", [b"xcy"])])
    produce(stub, t + "/x", "y", [b"other space"])
    assert payloads_of(consume_all(stub, t, "x")) == [b"x"]
    assert payloads_of(consume_all(stub, t, "x/y")) == [b"xy"]
    assert payloads_of(consume_all(stub, t)) == [b"x", b"xy", b"xcy"]


def test_consume_reads_long_segment_in_order(stub: Stub, space: str, max_records: int) -> None:
    n = 2_500
    produce_in_parts(stub, space, [write("s", [f"{i}".encode() for i in range(n)])], max_records)
    produce(stub, space, "t", [b"t"])
    recs = consume_all(stub, space, "s")
    assert seqs(recs) == list(range(1, n + 1))
    assert payloads_of(recs) == [f"{i}".encode() for i in range(n)]
    assert positions(consume_all(stub, space, from_offset=2_400)) == list(range(2_400, n + 2))
