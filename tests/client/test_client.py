"""The blocking client against an in-process server: every method, every error type."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import streams
from streams import Client
from streams.client import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NewRecord,
    NotFound,
    OffsetMismatch,
    OutOfRange,
    SequenceMismatch,
    StreamsError,
)
from tests.support.inproc import InProcessServer


@pytest.fixture
def client(inproc: InProcessServer) -> Iterator[Client]:
    with Client(inproc.target) as c:
        yield c


def test_reexports_from_the_package() -> None:
    assert streams.Client is Client
    assert streams.AsyncClient.__name__ == "AsyncClient"
    assert issubclass(streams.SequenceMismatch, streams.StreamsError)
    with pytest.raises(AttributeError):
        _ = streams.NoSuchThing  # type: ignore[attr-defined]


def test_produce_accepts_bytes_str_new_records_and_records(client: Client) -> None:
    ack = client.produce("s", "a", [b"raw", "text", NewRecord("meta", {"k": "v"})])
    assert [(a.segment, a.first_sequence, a.last_sequence) for a in ack.acks] == [("a", 1, 3)]
    assert (ack.first_position, ack.last_position, ack.duplicate) == (1, 3, False)
    assert ack.timestamp.tzinfo is UTC
    # A lone payload is one record, not a sequence of bytes.
    assert client.produce("s", "a", b"single").acks[0].last_sequence == 4
    records = list(client.consume("s", "a"))
    assert [r.payload for r in records] == [b"raw", b"text", b"meta", b"single"]
    assert records[2].metadata == {"k": "v"}
    assert records[1].text == "text"
    # A Record read back can be produced elsewhere: payload and metadata are copied.
    copied = client.produce("copy", "a", [records[2]])
    assert client.peek("copy", "a").metadata == {"k": "v"}
    assert copied.acks[0].last_sequence == 1


def test_produce_sets_a_transaction_id_when_none_is_given(client: Client) -> None:
    first = client.produce("s", "a", [b"x"])
    second = client.produce("s", "a", [b"y"])
    assert len(first.transaction_id) == 32 and first.transaction_id != second.transaction_id
    stored = list(client.consume("s", "a"))
    assert [r.transaction_id for r in stored] == [first.transaction_id, second.transaction_id]


def test_a_repeated_transaction_id_writes_once(client: Client) -> None:
    first = client.produce("s", "a", [b"x", b"y"], transaction_id="t-1")
    again = client.produce("s", "a", [b"x", b"y"], transaction_id="t-1")
    assert again.duplicate and not first.duplicate
    assert (again.first_position, again.last_position) == (first.first_position, 2)
    assert again.transaction_id == "t-1"
    assert [r.payload for r in client.consume("s")] == [b"x", b"y"]
    with pytest.raises(AlreadyExists, match="t-1"):
        client.produce("s", "a", [b"other"], transaction_id="t-1")


def test_sequence_mismatch_carries_segment_and_actual(client: Client) -> None:
    client.produce("s", "seg 'quoted'", [b"1", b"2"], expected_sequence=0)
    with pytest.raises(SequenceMismatch) as caught:
        client.produce("s", "seg 'quoted'", [b"3"], expected_sequence=5)
    assert caught.value.segment == "seg 'quoted'"
    assert caught.value.actual == 2
    assert isinstance(caught.value, StreamsError)
    assert client.produce("s", "seg 'quoted'", b"3", expected_sequence=2).acks[0].last_sequence == 3


def test_transaction_over_several_segments(client: Client) -> None:
    txn = client.transaction("orders").add("eu", [b"e1", b"e2"], expected_sequence=0)
    result = txn.add("audit", b"a1").commit()
    assert [(a.segment, a.first_sequence, a.last_sequence) for a in result.acks] == [
        ("eu", 1, 2),
        ("audit", 1, 1),
    ]
    assert (result.first_position, result.last_position) == (1, 3)
    # Committing the same builder again is a retry: answered as a duplicate.
    assert txn.commit().duplicate
    assert [(r.segment, r.position) for r in client.consume("orders")] == [
        ("eu", 1),
        ("eu", 2),
        ("audit", 3),
    ]
    # A failed check writes nothing in any segment.
    bad = client.transaction("orders").add("eu", b"x", expected_sequence=0).add("new", b"y")
    with pytest.raises(SequenceMismatch) as caught:
        bad.commit()
    assert (caught.value.segment, caught.value.actual) == ("eu", 2)
    assert [s.name for s in client.list_segments("orders")] == ["audit", "eu"]
    with pytest.raises(ValueError, match="at least one write"):
        client.transaction("orders").commit()


def test_consume_starts_and_bounds(client: Client) -> None:
    for i in range(1, 6):
        client.produce("s", "a" if i % 2 else "b", f"r{i}")
    assert [r.position for r in client.consume("s", from_offset=3)] == [3, 4, 5]
    assert [r.sequence for r in client.consume("s", "a", from_offset=2)] == [2, 3]
    assert [r.position for r in client.consume("s", to_offset=2)] == [1, 2]
    assert [r.position for r in client.consume("s", limit=2, max_batch=1)] == [1, 2]
    assert list(client.consume("nope")) == []
    last = client.peek("s")
    assert [r.position for r in client.consume("s", from_time=last.timestamp)] == [5]
    later = last.timestamp + timedelta(seconds=1)
    assert list(client.consume("s", from_time=later.timestamp())) == []
    client.commit("c", "s", offset=3)
    assert [r.position for r in client.consume("s", from_consumer="c")] == [4, 5]
    with pytest.raises(ValueError, match="at most one"):
        client.consume("s", from_offset=1, from_consumer="c")


def test_consume_pages_through_many_batches(client: Client) -> None:
    client.produce("big", "a", [f"{i}".encode() for i in range(2500)])
    records = list(client.consume("big", "a", max_batch=300))
    assert [r.sequence for r in records] == list(range(1, 2501))
    assert records[-1].payload == b"2499"


def test_follow_delivers_new_records_after_ready(client: Client) -> None:
    client.produce("f", "a", [b"old"])
    with client.follow("f", from_end=True, limit=3) as stream:
        stream.ready()
        client.produce("f", "a", [b"n1", b"n2"])
        client.produce("f", "b", [b"n3"])
        got = [(r.segment, r.payload, r.position) for r in stream]
    assert got == [("a", b"n1", 2), ("a", b"n2", 3), ("b", b"n3", 4)]


def test_follow_close_from_another_thread_ends_iteration(client: Client) -> None:
    stream = client.follow("quiet", "a")
    stream.ready()
    got: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        got.extend(r.payload for r in stream)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    client.produce("quiet", "a", b"one")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    stream.close()
    assert done.wait(10), "closing the stream did not end the iteration"
    assert got == [b"one"]


def test_follow_deadline_raises_deadline_exceeded(client: Client) -> None:
    with pytest.raises(DeadlineExceeded), client.follow("idle", timeout=0.3) as stream:
        list(stream)


def test_ready_raises_the_stream_error(client: Client) -> None:
    stream = client.follow("bad\x01name")
    with pytest.raises(InvalidArgument, match="space"):
        stream.ready()


def test_peek(client: Client) -> None:
    with pytest.raises(NotFound):
        client.peek("s")
    client.transaction("s").add("a", [b"1", b"2"]).add("b", b"3").commit()
    assert (client.peek("s", "a").sequence, client.peek("s", "a").payload) == (2, b"2")
    top = client.peek("s")
    assert (top.segment, top.position, top.offset_in("")) == ("b", 3, 3)
    assert top.timestamp_ns // 1000 == int(top.timestamp.timestamp() * 1_000_000)


def test_commit_and_get_offset(client: Client) -> None:
    client.produce("s", "a", [b"1", b"2", b"3"])
    assert client.get_offset("c", "s") is None
    assert client.commit("c", "s", offset=2) == 2
    assert client.get_offset("c", "s") == 2
    assert client.get_offset("c", "s", "a") is None  # a segment offset is its own
    assert client.commit("c", "s", "a", offset=3, expected_offset=0) == 3
    with pytest.raises(OffsetMismatch) as caught:
        client.commit("c", "s", "a", offset=1, expected_offset=2)
    assert caught.value.actual == 3
    with pytest.raises(OffsetMismatch) as none_stored:
        client.commit("other", "s", offset=1, expected_offset=1)
    assert none_stored.value.actual is None
    with pytest.raises(OutOfRange):
        client.commit("c", "s", offset=4)
    assert client.commit("c", "s", offset=0) == 0  # rewind
    assert client.get_offset("c", "s") == 0


def test_lists_page_for_the_caller(client: Client) -> None:
    names = [f"sp{i:02d}" for i in range(7)]
    for name in names:
        client.produce(name, "x", b".")
    assert [s.name for s in client.list_spaces(page_size=3)] == names
    assert [s.last_position for s in client.list_spaces()] == [1] * 7
    for seg in ["b", "a", "c/1", "c"]:
        client.produce("segs", seg, b".")
    infos = list(client.list_segments("segs", page_size=2))
    assert [i.name for i in infos] == ["a", "b", "c", "c/1"]
    assert [i.last_position for i in infos] == [2, 1, 4, 3]
    assert list(client.list_segments("unknown")) == []
    with pytest.raises(InvalidArgument, match="page_size"):
        list(client.list_spaces(page_size=-1))


def test_bad_requests_raise_invalid_argument(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="space"):
        client.produce("", "a", [b"x"])
    with pytest.raises(InvalidArgument):
        client.produce("s", "a", [])
    with pytest.raises(InvalidArgument):
        list(client.consume("s", max_batch=10_001))
    with pytest.raises(TypeError):
        client.produce("s", "a", [42])  # type: ignore[list-item]


def test_bearer_token_and_timeouts_reach_the_call(inproc: InProcessServer) -> None:
    # The server ignores the header; the call must still go through with it, and a
    # per-call timeout overrides the client's default.
    with Client(inproc.target, token="s3cret", timeout=5, keepalive_time=30) as c:
        assert c.produce("s", "a", b"x", timeout=2).acks[0].last_sequence == 1
        assert c.target == inproc.target


def test_consume_from_time_accepts_naive_datetimes_as_utc(client: Client) -> None:
    client.produce("t", "a", b"x")
    naive = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    assert [r.payload for r in client.consume("t", from_time=naive)] == [b"x"]
