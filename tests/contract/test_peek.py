"""Peek: the last record of a segment or of a whole space."""

from __future__ import annotations

import grpc

from streams.v1 import streams_pb2 as pb

from .helpers import (
    Stub,
    assert_status,
    consume_all,
    produce,
    produce_writes,
    rec,
    ts_key,
    unique,
    write,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def peek(stub: Stub, space: str, segment: str = "") -> pb.Record:
    return stub.Peek(pb.PeekRequest(space=space, segment=segment)).record


def test_peek_segment_last_record(stub: Stub, space: str) -> None:
    produce(stub, space, "a", [b"a1", b"a2"])
    produce(stub, space, "b", [b"b1"])
    tid = unique("tx")
    resp = produce(stub, space, "a", [rec(b"a3", {"m": "d"})], transaction_id=tid)
    produce(stub, space, "b", [b"b2"])
    r = peek(stub, space, "a")
    assert (r.space, r.segment, r.sequence, r.position, r.payload) == (space, "a", 3, 4, b"a3")
    assert dict(r.metadata) == {"m": "d"}
    assert r.transaction_id == tid
    assert ts_key(r.timestamp) == ts_key(resp.timestamp)
    assert r == consume_all(stub, space, "a")[-1]
    assert peek(stub, space, "b").payload == b"b2"


def test_peek_space_last_record_whatever_segment(stub: Stub, space: str) -> None:
    produce(stub, space, "z", [b"z1", b"z2"])
    produce(stub, space, "a", [b"a1"])
    r = peek(stub, space)
    assert (r.segment, r.sequence, r.position, r.payload) == ("a", 1, 3, b"a1")
    produce_writes(stub, space, [write("m", [b"m1", b"m2"]), write("b", [b"b1"])])
    r = peek(stub, space)
    assert (r.segment, r.sequence, r.position, r.payload) == ("b", 1, 6, b"b1")
    assert r == consume_all(stub, space)[-1]
    produce(stub, space, "z", [b"z3"])
    assert (peek(stub, space).segment, peek(stub, space).position) == ("z", 7)


def test_peek_follows_new_writes(stub: Stub, space: str) -> None:
    for i in range(1, 6):
        produce(stub, space, "s", [f"{i}".encode()])
        assert peek(stub, space, "s").sequence == i
        assert peek(stub, space).position == i


def test_peek_nothing_is_not_found(stub: Stub, space: str) -> None:
    assert_status(lambda: peek(stub, space), NOT_FOUND)
    assert_status(lambda: peek(stub, space, "s"), NOT_FOUND)
    produce(stub, space, "s")
    assert_status(lambda: peek(stub, space, "other"), NOT_FOUND)
    assert_status(lambda: peek(stub, space, "s/"), NOT_FOUND)


def test_peek_is_prefix_safe(stub: Stub) -> None:
    s = unique("s")
    produce_writes(stub, s, [write("ab", [b"ab1", b"ab2"]), write("a", [b"a1"])])
    produce(stub, s + "1", "a", [b"s1-a1", b"s1-a2", b"s1-a3"])
    assert peek(stub, s, "a").payload == b"a1"
    assert peek(stub, s, "ab").payload == b"ab2"
    assert peek(stub, s).payload == b"a1"
    assert peek(stub, s + "1").payload == b"s1-a3"
    assert_status(lambda: peek(stub, s, "b"), NOT_FOUND)
    # A space that is a prefix of another, itself empty.
    produce(stub, s + "xyz", "a", [b"1"])
    assert_status(lambda: peek(stub, s + "x"), NOT_FOUND)


def test_not_found_message_names_the_target(stub: Stub, space: str) -> None:
    assert_status(lambda: peek(stub, space), NOT_FOUND, space)
    produce(stub, space, "s")
    seg = unique("seg")
    assert_status(lambda: peek(stub, space, seg), NOT_FOUND, seg)
