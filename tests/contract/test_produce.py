"""Produce: numbering, acks, timestamps, transactions, expected_sequence, concurrency."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from streams.v1 import streams_pb2 as pb
from tests.support.process import ServerProcess

from .helpers import (
    Stub,
    assert_status,
    consume_all,
    name_of_bytes,
    payloads_of,
    positions,
    produce,
    produce_writes,
    rec,
    seqs,
    ts_key,
    unique,
    write,
)

FP = grpc.StatusCode.FAILED_PRECONDITION


def test_first_produce_numbers_from_one(stub: Stub, space: str) -> None:
    resp = produce(stub, space, "s", [b"a", b"b", b"c"])
    assert not resp.duplicate
    assert [(a.segment, a.first_sequence, a.last_sequence) for a in resp.acks] == [("s", 1, 3)]
    assert (resp.first_position, resp.last_position) == (1, 3)
    assert resp.HasField("timestamp")
    assert ts_key(resp.timestamp) > (0, 0)


def test_sequences_and_positions_dense_across_calls(stub: Stub, space: str) -> None:
    r1 = produce(stub, space, "a", [b"1", b"2"])
    r2 = produce(stub, space, "b", [b"3"])
    r3 = produce(stub, space, "a", [b"4", b"5", b"6"])
    assert (r1.acks[0].first_sequence, r1.acks[0].last_sequence) == (1, 2)
    assert (r2.acks[0].first_sequence, r2.acks[0].last_sequence) == (1, 1)
    assert (r3.acks[0].first_sequence, r3.acks[0].last_sequence) == (3, 5)
    assert [(r.first_position, r.last_position) for r in (r1, r2, r3)] == [(1, 2), (3, 3), (4, 6)]
    recs = consume_all(stub, space)
    assert positions(recs) == [1, 2, 3, 4, 5, 6]
    assert [(r.segment, r.sequence) for r in recs] == [
        ("a", 1), ("a", 2), ("b", 1), ("a", 3), ("a", 4), ("a", 5),
    ]  # fmt: skip
    assert payloads_of(recs) == [b"1", b"2", b"3", b"4", b"5", b"6"]


def test_multi_segment_positions_follow_writes_then_records(stub: Stub, space: str) -> None:
    produce(stub, space, "y", [b"y1"])  # y already has sequence 1, position 1
    resp = produce_writes(
        stub,
        space,
        [write("z", [b"z1", b"z2"]), write("x", [b"x1"]), write("y", [b"y2", b"y3", b"y4"])],
    )
    assert [(a.segment, a.first_sequence, a.last_sequence) for a in resp.acks] == [
        ("z", 1, 2), ("x", 1, 1), ("y", 2, 4),
    ]  # fmt: skip
    assert (resp.first_position, resp.last_position) == (2, 7)
    recs = consume_all(stub, space)
    assert [(r.position, r.segment, r.sequence, r.payload) for r in recs] == [
        (1, "y", 1, b"y1"),
        (2, "z", 1, b"z1"),
        (3, "z", 2, b"z2"),
        (4, "x", 1, b"x1"),
        (5, "y", 2, b"y2"),
        (6, "y", 3, b"y3"),
        (7, "y", 4, b"y4"),
    ]


def test_one_timestamp_per_transaction(stub: Stub, space: str) -> None:
    resp = produce_writes(stub, space, [write("a", [b"1", b"2"]), write("b", [b"3", b"4"])])
    recs = consume_all(stub, space)
    assert len(recs) == 4
    assert {ts_key(r.timestamp) for r in recs} == {ts_key(resp.timestamp)}


def test_timestamps_never_decrease_along_positions(stub: Stub, space: str) -> None:
    responses = []
    for i in range(12):
        responses.append(produce(stub, space, f"seg{i % 3}", [b"p"] * (1 + i % 2)))
        if i % 4 == 0:
            time.sleep(0.005)
    stamps = [ts_key(r.timestamp) for r in responses]
    assert stamps == sorted(stamps)
    recs = consume_all(stub, space)
    assert positions(recs) == list(range(1, len(recs) + 1))
    rec_stamps = [ts_key(r.timestamp) for r in recs]
    assert rec_stamps == sorted(rec_stamps)
    assert ts_key(responses[-1].timestamp) > ts_key(responses[0].timestamp)


def test_timestamp_is_server_time(stub: Stub, space: str) -> None:
    before = time.time()
    resp = produce(stub, space, "s")
    after = time.time()
    got = resp.timestamp.seconds + resp.timestamp.nanos / 1e9
    assert before - 5 <= got <= after + 5


def test_payload_and_metadata_round_trip(stub: Stub, space: str) -> None:
    md = {"k": "v", "ключ": "значение", "empty": "", "a/b:c": "x\ny"}
    binary = bytes(range(256))
    produce(stub, space, "s", [rec(binary, md), rec(b"", {})])
    recs = consume_all(stub, space, "s")
    assert [r.payload for r in recs] == [binary, b""]
    assert dict(recs[0].metadata) == md
    assert dict(recs[1].metadata) == {}


# --- transactions: all or nothing -------------------------------------------------


def _state(stub: Stub, space: str) -> list[tuple[str, int, int, bytes]]:
    return [(r.segment, r.sequence, r.position, r.payload) for r in consume_all(stub, space)]


def test_expected_sequence_mismatch_on_second_write_writes_nothing(stub: Stub, space: str) -> None:
    produce(stub, space, "first", [b"f1"])
    produce(stub, space, "second", [b"s1", b"s2"])
    before = _state(stub, space)
    assert_status(
        lambda: produce_writes(
            stub,
            space,
            [write("first", [b"new"]), write("second", [b"new"], expected_sequence=1)],
        ),
        FP,
        "second",
        "2",
    )
    assert _state(stub, space) == before
    # No position or sequence was used up by the failed transaction.
    resp = produce_writes(stub, space, [write("first", [b"f2"]), write("third", [b"t1"])])
    assert (resp.first_position, resp.last_position) == (4, 5)
    assert (resp.acks[0].first_sequence, resp.acks[1].first_sequence) == (2, 1)


def test_bad_name_in_second_write_writes_nothing(stub: Stub, space: str) -> None:
    produce(stub, space, "one", [b"1"])
    assert_status(
        lambda: produce_writes(stub, space, [write("one", [b"2"]), write("bad\x00", [b"3"])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "segment",
    )
    assert _state(stub, space) == [("one", 1, 1, b"1")]


def test_oversized_payload_in_second_write_writes_nothing(stub: Stub, space: str) -> None:
    assert_status(
        lambda: produce_writes(
            stub, space, [write("one", [b"ok"]), write("two", [b"x" * (1024 * 1024 + 1)])]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "payload",
    )
    assert _state(stub, space) == []
    assert produce(stub, space, "one").first_position == 1


def test_new_space_with_failed_transaction_stays_unknown(stub: Stub, space: str) -> None:
    assert_status(
        lambda: produce(stub, space, "s", [b"x"], expected_sequence=3),
        FP,
    )
    assert consume_all(stub, space) == []
    assert_status(lambda: stub.Peek(pb.PeekRequest(space=space)), grpc.StatusCode.NOT_FOUND)
    assert list(stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments) == []


# --- expected_sequence --------------------------------------------------------------


def test_expected_sequence_absent_means_no_check(stub: Stub, space: str) -> None:
    produce(stub, space, "s", [b"1", b"2"])
    w = write("s", [b"3"])
    assert not w.HasField("expected_sequence")
    resp = produce_writes(stub, space, [w])
    assert resp.acks[0].first_sequence == 3


def test_expected_sequence_zero_on_new_segment(stub: Stub, space: str) -> None:
    resp = produce(stub, space, "s", [b"1"], expected_sequence=0)
    assert resp.acks[0].last_sequence == 1


def test_expected_sequence_zero_on_nonempty_segment_fails(stub: Stub, space: str) -> None:
    seg = unique("seg")
    produce(stub, space, seg, [b"1"] * 7)
    assert_status(lambda: produce(stub, space, seg, [b"x"], expected_sequence=0), FP, seg, "7")
    assert seqs(consume_all(stub, space, seg)) == [1, 2, 3, 4, 5, 6, 7]


def test_expected_sequence_correct(stub: Stub, space: str) -> None:
    produce(stub, space, "s", [b"1"] * 4)
    resp = produce(stub, space, "s", [b"5", b"6"], expected_sequence=4)
    assert (resp.acks[0].first_sequence, resp.acks[0].last_sequence) == (5, 6)
    resp = produce(stub, space, "s", [b"7"], expected_sequence=6)
    assert resp.acks[0].first_sequence == 7


def test_expected_sequence_too_low_and_too_high_fail(stub: Stub, space: str) -> None:
    seg = unique("seg")
    produce(stub, space, seg, [b"1"] * 5)
    for wrong in (3, 4, 6, 99):
        assert_status(
            lambda wrong=wrong: produce(stub, space, seg, [b"x"], expected_sequence=wrong),
            FP,
            seg,
            "5",
        )
    assert seqs(consume_all(stub, space, seg)) == [1, 2, 3, 4, 5]


def test_expected_sequence_nonzero_on_unknown_segment_fails(stub: Stub, space: str) -> None:
    produce(stub, space, "other", [b"1"] * 3)
    seg = unique("seg")
    assert_status(lambda: produce(stub, space, seg, [b"x"], expected_sequence=3), FP, seg, "0")


def test_expected_sequence_checked_per_segment(stub: Stub, space: str) -> None:
    produce_writes(stub, space, [write("a", [b"1"] * 2), write("b", [b"1"] * 5)])
    resp = produce_writes(
        stub,
        space,
        [write("a", [b"x"], expected_sequence=2), write("b", [b"x"], expected_sequence=5)],
    )
    assert [(a.first_sequence, a.last_sequence) for a in resp.acks] == [(3, 3), (6, 6)]
    assert_status(
        lambda: produce_writes(
            stub,
            space,
            [write("a", [b"x"], expected_sequence=3), write("b", [b"x"], expected_sequence=3)],
        ),
        FP,
        "b",
        "6",
    )


def test_expected_sequence_gives_exactly_one_winner(stub: Stub, space: str) -> None:
    produce(stub, space, "s", [b"0"])

    def attempt(i: int) -> grpc.StatusCode:
        try:
            produce(stub, space, "s", [str(i).encode()], expected_sequence=1)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(FP) == 15
    assert seqs(consume_all(stub, space, "s")) == [1, 2]


# --- concurrency --------------------------------------------------------------------


def _assert_dense(values: list[int], n: int) -> None:
    assert sorted(values) == list(range(1, n + 1))


def test_concurrent_produce_one_segment(stub: Stub, space: str) -> None:
    threads, calls = 8, 50

    def worker(t: int) -> list[pb.ProduceResponse]:
        return [produce(stub, space, "s", [f"{t}:{i}".encode()]) for i in range(calls)]

    with ThreadPoolExecutor(threads) as pool:
        results = [r for rs in pool.map(worker, range(threads)) for r in rs]
    n = threads * calls
    _assert_dense([r.acks[0].first_sequence for r in results], n)
    _assert_dense([r.first_position for r in results], n)
    recs = consume_all(stub, space, "s")
    assert seqs(recs) == list(range(1, n + 1))
    assert positions(recs) == list(range(1, n + 1))
    assert len(set(payloads_of(recs))) == n
    # Each acknowledged (sequence, position) holds that call's record.
    by_seq = {r.sequence: r for r in recs}
    for t_resp in results:
        r = by_seq[t_resp.acks[0].first_sequence]
        assert r.position == t_resp.first_position
        assert ts_key(r.timestamp) == ts_key(t_resp.timestamp)
    stamps = [ts_key(r.timestamp) for r in recs]
    assert stamps == sorted(stamps)


def test_concurrent_produce_many_segments_one_space(stub: Stub, space: str) -> None:
    threads, calls = 8, 50

    def worker(t: int) -> list[pb.ProduceResponse]:
        out = []
        for i in range(calls):
            if i % 10 == 9:  # now and then a two-segment transaction
                out.append(
                    produce_writes(
                        stub, space, [write(f"s{t}", [b"m"]), write(f"shared{i}", [b"m"])]
                    )
                )
            else:
                out.append(produce(stub, space, f"s{t}", [f"{t}:{i}".encode()]))
        return out

    with ThreadPoolExecutor(threads) as pool:
        results = [r for rs in pool.map(worker, range(threads)) for r in rs]
    total = sum(r.last_position - r.first_position + 1 for r in results)
    all_positions = [p for r in results for p in range(r.first_position, r.last_position + 1)]
    _assert_dense(all_positions, total)
    recs = consume_all(stub, space)
    assert positions(recs) == list(range(1, total + 1))
    per_segment: dict[str, list[int]] = {}
    for r in recs:
        per_segment.setdefault(r.segment, []).append(r.sequence)
    for seg, s in per_segment.items():
        assert s == list(range(1, len(s) + 1)), seg
    for t in range(threads):
        assert len(per_segment[f"s{t}"]) == calls
    stamps = [ts_key(r.timestamp) for r in recs]
    assert stamps == sorted(stamps)


def test_readers_never_see_half_a_transaction(stub: Stub, space: str) -> None:
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            tid = f"tx{i}"
            ws = [write(f"seg{j}", [b"r"] * (1 + j)) for j in range(3)]
            produce_writes(stub, space, ws, transaction_id=tid)
            i += 1

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(writer)
        try:
            reads = 0
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                recs = consume_all(stub, space)
                counts: dict[str, int] = {}
                for r in recs:
                    counts[r.transaction_id] = counts.get(r.transaction_id, 0) + 1
                for tid, count in counts.items():
                    assert count == 6, f"{tid} seen with {count} of its 6 records"
                for j in range(3):
                    seg_recs = consume_all(stub, space, f"seg{j}")
                    assert len(seg_recs) % (1 + j) == 0
                reads += 1
        finally:
            stop.set()
            fut.result()
    assert reads > 0


# --- transaction_id ------------------------------------------------------------------


def test_transaction_id_repeat_returns_original_response(stub: Stub, space: str) -> None:
    produce(stub, space, "other", [b"o"])
    tid = unique("tx")
    writes = [write("a", [rec(b"1", {"k": "v"}), b"2"]), write("b", [b"3"])]
    first = produce_writes(stub, space, writes, transaction_id=tid)
    assert not first.duplicate
    before = _state(stub, space)
    time.sleep(0.01)
    again = produce_writes(stub, space, writes, transaction_id=tid)
    assert again.duplicate
    assert list(again.acks) == list(first.acks)
    assert (again.first_position, again.last_position) == (first.first_position, 4)
    assert ts_key(again.timestamp) == ts_key(first.timestamp)
    assert _state(stub, space) == before
    # Numbering goes on as if the repeat never happened.
    nxt = produce(stub, space, "a", [b"4"])
    assert (nxt.first_position, nxt.acks[0].first_sequence) == (5, 3)
    assert not nxt.duplicate


def test_records_carry_their_transaction_id(stub: Stub, space: str) -> None:
    tid = unique("tx")
    produce_writes(stub, space, [write("a", [b"1"]), write("b", [b"2", b"3"])], tid)
    produce(stub, space, "a", [b"4"])
    assert [r.transaction_id for r in consume_all(stub, space)] == [tid, tid, tid, ""]


def test_transaction_id_reused_with_other_content_already_exists(stub: Stub, space: str) -> None:
    tid = unique("tx")
    original = [write("a", [rec(b"1", {"k": "v"})]), write("b", [b"2"], expected_sequence=0)]
    produce_writes(stub, space, original, transaction_id=tid)
    before = _state(stub, space)
    variants = {
        "payload": [write("a", [rec(b"X", {"k": "v"})]), write("b", [b"2"], 0)],
        "metadata": [write("a", [rec(b"1", {"k": "w"})]), write("b", [b"2"], 0)],
        "segment": [write("a", [rec(b"1", {"k": "v"})]), write("c", [b"2"], 0)],
        "extra record": [write("a", [rec(b"1", {"k": "v"}), b"x"]), write("b", [b"2"], 0)],
        "missing write": [write("a", [rec(b"1", {"k": "v"})])],
        "write order": [write("b", [b"2"], 0), write("a", [rec(b"1", {"k": "v"})])],
        "expected_sequence": [write("a", [rec(b"1", {"k": "v"})]), write("b", [b"2"], 1)],
    }
    for name, ws in variants.items():
        err = assert_status(
            lambda ws=ws: produce_writes(stub, space, ws, transaction_id=tid),
            grpc.StatusCode.ALREADY_EXISTS,
            "transaction_id",
        )
        assert err is not None, name
    assert _state(stub, space) == before


def test_transaction_id_is_per_space(stub: Stub, space: str) -> None:
    tid = unique("tx")
    other_space = unique("space")
    r1 = produce(stub, space, "s", [b"1"], transaction_id=tid)
    r2 = produce(stub, other_space, "s", [b"other content"], transaction_id=tid)
    assert not r1.duplicate
    assert not r2.duplicate
    assert payloads_of(consume_all(stub, other_space)) == [b"other content"]
    r3 = produce(stub, other_space, "s", [b"other content"], transaction_id=tid)
    assert r3.duplicate
    assert payloads_of(consume_all(stub, space)) == [b"1"]


def test_validation_comes_before_duplicate_check(stub: Stub, space: str) -> None:
    tid = unique("tx")
    produce(stub, space, "s", [b"1"], transaction_id=tid)
    assert_status(
        lambda: produce_writes(stub, space, [write("s", [])], transaction_id=tid),
        grpc.StatusCode.INVALID_ARGUMENT,
        "records",
    )
    assert_status(
        lambda: produce(stub, space, "bad\x7f", [b"1"], transaction_id=tid),
        grpc.StatusCode.INVALID_ARGUMENT,
        "segment",
    )


def test_duplicate_check_comes_before_expected_sequence(stub: Stub, space: str) -> None:
    tid = unique("tx")
    first = produce(stub, space, "s", [b"1"], expected_sequence=0, transaction_id=tid)
    # expected_sequence=0 is now wrong (s holds one record), but it is a repeat.
    again = produce(stub, space, "s", [b"1"], expected_sequence=0, transaction_id=tid)
    assert again.duplicate
    assert list(again.acks) == list(first.acks)
    # Other content and a wrong expected_sequence: the duplicate check speaks first.
    assert_status(
        lambda: produce(stub, space, "s", [b"2"], expected_sequence=0, transaction_id=tid),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert seqs(consume_all(stub, space, "s")) == [1]


def test_failed_transaction_does_not_claim_its_id(stub: Stub, space: str) -> None:
    tid = unique("tx")
    produce(stub, space, "s", [b"1"])
    assert_status(
        lambda: produce(stub, space, "s", [b"2"], expected_sequence=0, transaction_id=tid), FP
    )
    resp = produce(stub, space, "s", [b"2"], expected_sequence=1, transaction_id=tid)
    assert not resp.duplicate
    assert resp.acks[0].first_sequence == 2


def test_transaction_id_length_limits(stub: Stub, space: str) -> None:
    for tid in ("x", "t" * 128, "é" * 64, name_of_bytes(128, "€", unique("tx"))):
        assert not produce(stub, space, "s", [tid.encode()], transaction_id=tid).duplicate
    for tid in ("t" * 129, "é" * 65, name_of_bytes(129, "€", unique("tx"))):
        assert_status(
            lambda tid=tid: produce(stub, space, "s", [b"x"], transaction_id=tid),
            grpc.StatusCode.INVALID_ARGUMENT,
            "transaction_id",
        )
    assert len(consume_all(stub, space, "s")) == 4


def test_concurrent_repeats_write_once(stub: Stub, space: str) -> None:
    tid = unique("tx")
    writes = [write("s", [b"only once"])]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: produce_writes(stub, space, writes, tid), range(8)))
    assert [r.duplicate for r in results].count(False) == 1
    assert {(r.first_position, r.last_position) for r in results} == {(1, 1)}
    assert payloads_of(consume_all(stub, space)) == [b"only once"]


def test_error_messages_name_field_and_value(stub: Stub, space: str) -> None:
    seg = unique("seg")
    produce(stub, space, seg, [b"1"] * 4)
    assert_status(
        lambda: produce(stub, space, seg, [b"x"], expected_sequence=2),
        FP,
        "expected_sequence",
        seg,
        "4",
    )
    tid = unique("tx")
    produce(stub, space, seg, [b"1"], transaction_id=tid)
    assert_status(
        lambda: produce(stub, space, seg, [b"2"], transaction_id=tid),
        grpc.StatusCode.ALREADY_EXISTS,
        "transaction_id",
        tid,
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _raw_produce(space: str, tid: str, metadata: list[tuple[str, str]]) -> bytes:
    """A ProduceRequest whose map entries go on the wire in the given order."""
    entries = b"".join(
        _field(2, _field(1, key.encode()) + _field(2, value.encode())) for key, value in metadata
    )
    record = _field(1, b"payload") + entries
    segment_write = _field(1, b"s") + _field(2, record)
    return _field(1, space.encode()) + _field(2, segment_write) + _field(3, tid.encode())


def test_repeat_with_map_entries_in_another_wire_order_is_a_duplicate(
    server: ServerProcess, space: str
) -> None:
    # Map order on the wire is not part of the content (Go, for one, randomizes it).
    tid = unique("tx")
    pairs = [(f"key{i}", f"value{i}") for i in range(8)]
    first_raw = _raw_produce(space, tid, pairs)
    again_raw = _raw_produce(space, tid, pairs[::-1])
    parsed = pb.ProduceRequest.FromString(again_raw)
    assert dict(parsed.writes[0].records[0].metadata) == dict(pairs)
    assert first_raw != again_raw
    assert server.channel is not None
    call = server.channel.unary_unary(
        "/streams.v1.StreamsService/Produce",
        request_serializer=None,
        response_deserializer=pb.ProduceResponse.FromString,
    )
    first = call(first_raw, timeout=30)
    again = call(again_raw, timeout=30)
    assert not first.duplicate
    assert again.duplicate
    assert list(again.acks) == list(first.acks)
    assert len(consume_all(server.stub, space)) == 1
