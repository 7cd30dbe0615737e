"""Names in every RPC, request shape, and the default limits."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from streams.v1 import streams_pb2 as pb

from .helpers import (
    BAD_NAMES,
    BAD_NONEMPTY_NAMES,
    MIB,
    Stub,
    assert_status,
    consume_all,
    consume_responses,
    name_of_bytes,
    payloads_of,
    produce,
    produce_writes,
    rec,
    unique,
    write,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# The contract's records-per-Produce limit; a backend may have a lower one,
# which its refusal names (the max_records fixture).
CONTRACT_MAX_RECORDS = 10_000

# --- names -----------------------------------------------------------------------------

# rpc case -> (call with the bad name, field the message must name, empty name is bad)
NameCall = Callable[[Stub, str, str], object]
NAME_CASES: dict[str, tuple[NameCall, str, bool]] = {
    "produce.space": (lambda stub, bad, sp: produce(stub, bad, "seg"), "space", True),
    "produce.segment": (lambda stub, bad, sp: produce(stub, sp, bad), "segment", True),
    "produce.segment_in_2nd_write": (
        lambda stub, bad, sp: produce_writes(stub, sp, [write("ok", [b"x"]), write(bad, [b"x"])]),
        "segment",
        True,
    ),
    "consume.space": (lambda stub, bad, sp: consume_responses(stub, bad), "space", True),
    "consume.segment": (lambda stub, bad, sp: consume_responses(stub, sp, bad), "segment", False),
    "consume.from_consumer": (
        lambda stub, bad, sp: consume_responses(stub, sp, "seg", from_consumer=bad),
        "from_consumer",
        True,
    ),
    "consume.from_consumer_space_level": (
        lambda stub, bad, sp: consume_responses(stub, sp, from_consumer=bad),
        "from_consumer",
        True,
    ),
    "peek.space": (
        lambda stub, bad, sp: stub.Peek(pb.PeekRequest(space=bad, segment="seg")),
        "space",
        True,
    ),
    "peek.segment": (
        lambda stub, bad, sp: stub.Peek(pb.PeekRequest(space=sp, segment=bad)),
        "segment",
        False,
    ),
    "commit.consumer": (
        lambda stub, bad, sp: stub.Commit(pb.CommitRequest(consumer=bad, space=sp, segment="s")),
        "consumer",
        True,
    ),
    "commit.space": (
        lambda stub, bad, sp: stub.Commit(pb.CommitRequest(consumer="c", space=bad, segment="s")),
        "space",
        True,
    ),
    "commit.segment": (
        lambda stub, bad, sp: stub.Commit(pb.CommitRequest(consumer="c", space=sp, segment=bad)),
        "segment",
        False,
    ),
    "get_offset.consumer": (
        lambda stub, bad, sp: stub.GetOffset(pb.GetOffsetRequest(consumer=bad, space=sp)),
        "consumer",
        True,
    ),
    "get_offset.space": (
        lambda stub, bad, sp: stub.GetOffset(pb.GetOffsetRequest(consumer="c", space=bad)),
        "space",
        True,
    ),
    "get_offset.segment": (
        lambda stub, bad, sp: stub.GetOffset(
            pb.GetOffsetRequest(consumer="c", space=sp, segment=bad)
        ),
        "segment",
        False,
    ),
    "list_segments.space": (
        lambda stub, bad, sp: stub.ListSegments(pb.ListSegmentsRequest(space=bad)),
        "space",
        True,
    ),
}

BAD_NAME_PARAMS = [
    pytest.param(case, bad, id=f"{case}-{kind}")
    for case, (_, _, empty_is_bad) in NAME_CASES.items()
    for kind, bad in (BAD_NAMES if empty_is_bad else BAD_NONEMPTY_NAMES).items()
]


@pytest.mark.parametrize(("case", "bad"), BAD_NAME_PARAMS)
def test_bad_name_rejected_in_every_rpc(stub: Stub, space: str, case: str, bad: str) -> None:
    call, field, _ = NAME_CASES[case]
    words: list[str] = [field]
    if "bad" in bad:
        words.append("bad")  # the message names the value (escaped or not)
    assert_status(lambda: call(stub, bad, space), INVALID, *words)
    if case.startswith("produce"):
        assert consume_all(stub, space) == []


GOOD_NAMES = {
    "one_byte": "a",
    "255_ascii": "a" * 255,
    "255_bytes_two_and_three_byte_chars": "é€" * 51,
    "255_bytes_four_byte_chars": name_of_bytes(255, "\U0001f600"),
    "slash_and_colon": "a/b:c//::",
    "non_ascii": "日本語 données ñ",
    "c1_range_is_not_control_by_contract": "x\u0080\u009fy",
    "punctuation_and_space": " !\"#$%&'()*+,-.;<=>?@[\\]^_`{|}~",
    "unicode_separators": "a\u00a0b\u2028c\ufeff",
}


@pytest.mark.parametrize("name", GOOD_NAMES.values(), ids=GOOD_NAMES.keys())
def test_good_name_accepted_in_every_rpc(stub: Stub, name: str) -> None:
    # Unique per run when the name has room, keeping its exact byte length otherwise.
    space = name
    if len(name.encode()) <= 200:
        space = unique("n") + name
    consumer = name
    produce(stub, space, name, [b"1", b"2"])
    got = consume_all(stub, space, name)
    assert [(r.space, r.segment, r.payload) for r in got] == [
        (space, name, b"1"),
        (space, name, b"2"),
    ]
    assert payloads_of(consume_all(stub, space)) == [b"1", b"2"]
    peeked = stub.Peek(pb.PeekRequest(space=space, segment=name)).record
    assert (peeked.space, peeked.segment, peeked.sequence) == (space, name, 2)
    segs = stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments
    assert [(s.name, s.last_sequence) for s in segs] == [(name, 2)]
    commit = pb.CommitRequest(consumer=consumer, space=space, segment=name, offset=1)
    assert stub.Commit(commit).offset == 1
    got_offset = stub.GetOffset(pb.GetOffsetRequest(consumer=consumer, space=space, segment=name))
    assert got_offset.offset == 1
    assert payloads_of(consume_all(stub, space, name, from_consumer=consumer)) == [b"2"]


def test_names_are_counted_in_bytes_not_characters(stub: Stub, space: str) -> None:
    ok = "é" * 127 + "a"  # 128 characters, 255 bytes
    too_long = "é" * 128  # 128 characters, 256 bytes
    assert produce(stub, space, ok).acks[0].segment == ok
    assert_status(lambda: produce(stub, space, too_long), INVALID, "segment")
    assert_status(lambda: consume_responses(stub, space, too_long), INVALID, "segment")
    assert [r.segment for r in consume_all(stub, space)] == [ok]


# --- request shape -------------------------------------------------------------------


def test_empty_writes_rejected(stub: Stub, space: str) -> None:
    assert_status(lambda: produce_writes(stub, space, []), INVALID, "writes")
    assert consume_all(stub, space) == []


def test_empty_records_rejected(stub: Stub, space: str) -> None:
    assert_status(lambda: produce_writes(stub, space, [write("s", [])]), INVALID, "records")
    assert_status(
        lambda: produce_writes(stub, space, [write("s", [b"x"]), write("t", [])]),
        INVALID,
        "records",
    )
    assert consume_all(stub, space) == []


def test_segment_named_twice_rejected(stub: Stub, space: str) -> None:
    seg = unique("seg")
    assert_status(
        lambda: produce_writes(stub, space, [write(seg, [b"1"]), write(seg, [b"2"])]),
        INVALID,
        "segment",
        seg,
    )
    assert_status(
        lambda: produce_writes(
            stub, space, [write(seg, [b"1"]), write("other", [b"2"]), write(seg, [b"3"])]
        ),
        INVALID,
        "segment",
        seg,
    )
    assert consume_all(stub, space) == []


# --- limits (defaults) ---------------------------------------------------------------


def test_payload_limit(stub: Stub, space: str) -> None:
    assert produce(stub, space, "s", [b"p" * MIB]).acks[0].last_sequence == 1
    assert_status(lambda: produce(stub, space, "s", [b"q" * (MIB + 1)]), INVALID, "payload")
    assert_status(lambda: produce(stub, space, "s", [b"ok", b"q" * (MIB + 1)]), INVALID, "payload")
    got = consume_all(stub, space, "s")
    assert [len(r.payload) for r in got] == [MIB]


def _spellings(n: int) -> tuple[str, ...]:
    """``n`` as a message may write it: 10001, 10,001 or 10 001."""
    return (f"{n}", f"{n:,}", f"{n:,}".replace(",", " "))


def test_records_limit_counts_across_writes(stub: Stub, space: str, max_records: int) -> None:
    limit, half = max_records, max_records // 2
    assert limit <= CONTRACT_MAX_RECORDS, "a backend may lower the limit, never raise it"
    resp = produce_writes(
        stub, space, [write("a", [b"r"] * half), write("b", [b"r"] * (limit - half))]
    )
    assert (resp.first_position, resp.last_position) == (1, limit)
    resp = produce(stub, space, "c", [b"r"] * limit)
    assert resp.acks[0].last_sequence == limit
    count = (*_spellings(limit + 1), *_spellings(limit))
    named = ("max_records_per_produce",) if limit < CONTRACT_MAX_RECORDS else ()
    assert_status(
        lambda: produce_writes(
            stub, space, [write("a", [b"r"] * half), write("b", [b"r"] * (limit - half + 1))]
        ),
        INVALID,
        "records",
        count,
        *named,
    )
    assert_status(
        lambda: produce(stub, space, "d", [b"r"] * (limit + 1)), INVALID, "records", count, *named
    )
    segs = stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments
    assert [(s.name, s.last_sequence) for s in segs] == [
        ("a", half),
        ("b", limit - half),
        ("c", limit),
    ]


def test_metadata_pairs_limit(stub: Stub, space: str) -> None:
    ok = {f"k{i}": "v" for i in range(64)}
    produce(stub, space, "s", [rec(b"x", ok)])
    too_many = {f"k{i}": "v" for i in range(65)}
    assert_status(
        lambda: produce(stub, space, "s", [rec(b"x", too_many)]), INVALID, "metadata", "65"
    )
    assert_status(
        lambda: produce_writes(
            stub, space, [write("t", [b"x"]), write("s", [rec(b"y", too_many)])]
        ),
        INVALID,
        "metadata",
    )
    got = consume_all(stub, space)
    assert len(got) == 1
    assert dict(got[0].metadata) == ok


def test_metadata_key_limit(stub: Stub, space: str) -> None:
    keys_ok = ["k" * 255, "é" * 127 + "k"]  # 255 bytes each
    produce(stub, space, "s", [rec(b"x", {k: "v"}) for k in keys_ok])
    for bad in ("k" * 256, "é" * 128):  # 256 bytes each
        assert_status(
            lambda bad=bad: produce(stub, space, "s", [rec(b"x", {bad: "v"})]),
            INVALID,
            "metadata",
        )
    assert [list(r.metadata) for r in consume_all(stub, space)] == [[k] for k in keys_ok]


def test_metadata_value_limit(stub: Stub, space: str) -> None:
    values_ok = ["v" * 4096, "€" * 1365 + "v"]  # 4096 bytes each
    produce(stub, space, "s", [rec(b"x", {"k": v}) for v in values_ok])
    for bad in ("v" * 4097, "€" * 1366):  # 4097 and 4098 bytes
        assert_status(
            lambda bad=bad: produce(stub, space, "s", [rec(b"x", {"k": bad})]),
            INVALID,
            "metadata",
        )
    assert [r.metadata["k"] for r in consume_all(stub, space)] == values_ok


def test_request_size_limit(stub: Stub, space: str) -> None:
    # 15 records of 1 MiB: about 15 MiB, under the 16 MiB default.
    resp = produce(stub, space, "s", [bytes([i]) * MIB for i in range(15)])
    assert resp.acks[0].last_sequence == 15
    # 17 valid records of 1 MiB each: over 16 MiB.
    assert_status(
        lambda: produce(stub, space, "t", [bytes([i]) * MIB for i in range(17)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    segs = stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments
    assert [(s.name, s.last_sequence) for s in segs] == [("s", 15)]
    # The server still works after refusing.
    assert produce(stub, space, "t").acks[0].last_sequence == 1


def test_max_batch_at_limit_accepted(stub: Stub, space: str) -> None:
    produce(stub, space, "s", [b"x"] * 3)
    responses = consume_responses(stub, space, "s", max_batch=10_000)
    assert sum(len(r.records) for r in responses) == 3
