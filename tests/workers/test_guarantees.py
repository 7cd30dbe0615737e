"""The guarantees of a ``--workers 2`` server (a writer and two gRPC fronts on
one port), checked across fronts: which front serves a connection is read from
/proc (tests/support/fronts.py), and every test has clients on both.

- ``--listen 127.0.0.1:0``: both fronts listen on the one port printed in
  ``listening on`` and serve calls there.
- Follow without gap: producers on both fronts, followers of the space, of a
  segment and of a segment prefix on both fronts, some started before the
  first write and some in the middle (the hand-off from stored records to the
  live tail): each receives every record exactly once, in order, as acked.
- A write acked by one front is read at once through the other (reads,
  peeks, lists, offsets), with no wait for the follow pump.
- One transaction sent through both fronts at once is written once; removals
  acked by one front are seen at once through the other; followers coming and
  going on one front miss nothing; restarts on the same port serve it.
- SIGHUP reaches every front: a follow stream on each front whose token the
  reloaded file no longer holds ends UNAUTHENTICATED.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.limits import MIN_MEMORY_BUDGET_BYTES
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.ops.helpers import write_tokens
from tests.support.fronts import (
    SpreadServer,
    channels_per_front,
    front_pids,
    listening_inodes,
    socket_inodes,
)
from tests.support.process import ServerProcess, free_port

WORKERS = 2
CALL_TIMEOUT = 10.0
FOLLOW_TIMEOUT = 60.0
SPACE = "g"
SEGMENTS = ("a", "b", "a/x")
PER_PRODUCER = 120


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    data = tmp_path / "data"
    data.mkdir()
    with ServerProcess(data, workers=WORKERS) as proc:
        proc.start()
        yield proc


def test_every_front_serves_the_printed_port(server: ServerProcess) -> None:
    assert server.argv()[server.argv().index("--listen") + 1] == "127.0.0.1:0"
    fronts = front_pids(server.pid, WORKERS)
    # Each front holds a listening socket on the printed port (the writer holds
    # its reservation, bound but not listening).
    listening = listening_inodes(server.port)
    for front in fronts:
        assert listening & socket_inodes(front), f"front {front} does not listen on {server.port}"
    assert not listening & socket_inodes(server.pid), "the writer listens on the public port"
    # ...and serves calls there: a write through each, read back through the other.
    per_front = channels_per_front(server.port, fronts)
    stubs = [pb_grpc.StreamsServiceStub(chans[0]) for chans in per_front.values()]
    for i, stub in enumerate(stubs):
        ack = stub.Produce(
            pb.ProduceRequest(
                space="port", writes=[pb.SegmentWrite(segment="s", records=[_record(i)])]
            ),
            timeout=CALL_TIMEOUT,
        )
        assert ack.first_position == i + 1
        other = stubs[(i + 1) % len(stubs)]
        got = other.Peek(pb.PeekRequest(space="port"), timeout=CALL_TIMEOUT)
        assert got.record.payload == _record(i).payload
    _close(per_front)


def _record(i: int) -> pb.RecordInput:
    return pb.RecordInput(payload=f"record {i}".encode(), metadata={"i": str(i)})


def _close(per_front: dict[int, list[grpc.Channel]]) -> None:
    for chans in per_front.values():
        for channel in chans:
            channel.close()


class Producer(threading.Thread):
    """Sends its transactions (1-3 segments, 1-4 records each) one after the other."""

    def __init__(
        self, name: str, stub: pb_grpc.StreamsServiceStub, seed: int, padding: int = 0
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.stub = stub
        rng = random.Random(seed)
        self.requests = []
        for n in range(PER_PRODUCER):
            writes = [
                pb.SegmentWrite(
                    segment=segment,
                    records=[
                        pb.RecordInput(
                            payload=f"{name}/{n}/{segment}/{i}/".encode() + rng.randbytes(padding)
                        )
                        for i in range(rng.randint(1, 4))
                    ],
                )
                for segment in rng.sample(SEGMENTS, rng.randint(1, 3))
            ]
            self.requests.append(
                pb.ProduceRequest(space=SPACE, writes=writes, transaction_id=f"{name}-{n}")
            )
        self.acks: list[pb.ProduceResponse] = []
        self.error: BaseException | None = None
        self.halfway = threading.Event()

    def run(self) -> None:
        try:
            for n, request in enumerate(self.requests):
                self.acks.append(self.stub.Produce(request, timeout=CALL_TIMEOUT))
                if n == PER_PRODUCER // 2:
                    self.halfway.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.halfway.set()

    def records(self) -> int:
        return sum(len(w.records) for r in self.requests for w in r.writes)

    def acked(self) -> dict[int, tuple[str, int, bytes]]:
        """position -> (segment, sequence, payload) of every acked record."""
        out = {}
        for request, ack in zip(self.requests, self.acks, strict=True):
            position = ack.first_position
            for write, seg_ack in zip(request.writes, ack.acks, strict=True):
                for i, record in enumerate(write.records):
                    out[position] = (write.segment, seg_ack.first_sequence + i, record.payload)
                    position += 1
        return out


class Follower(threading.Thread):
    """Follows ``request`` until its to_offset; keeps what it received."""

    def __init__(self, name: str, stub: pb_grpc.StreamsServiceStub, request: object) -> None:
        super().__init__(name=name, daemon=True)
        self.stub = stub
        self.request = request
        self.got: list[pb.Record] = []
        self.error: BaseException | None = None
        self.open = threading.Event()

    def run(self) -> None:
        try:
            call = self.stub.Consume(self.request, timeout=FOLLOW_TIMEOUT)
            call.initial_metadata()  # the server has taken the request
            self.open.set()
            for response in call:
                self.got.extend(response.records)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.open.set()


# The whole server's budget in the tight case: the least --workers 2 takes (a
# third each), so the tail windows of 8 KiB records are evicted all along and
# followers read through the writer (a window miss) as often as from a window.
TIGHT_BUDGET = 3 * MIN_MEMORY_BUDGET_BYTES


@pytest.mark.parametrize(
    ("budget", "padding"), [(None, 0), (TIGHT_BUDGET, 8 * 1024)], ids=["default", "tight-memory"]
)
def test_follow_without_gap_across_fronts(tmp_path: Path, budget: int | None, padding: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    flags = [] if budget is None else ["--memory-budget-bytes", str(budget)]
    with ServerProcess(data, workers=WORKERS, flags=flags) as server:
        server.start()
        _follow_without_gap(server, padding)


def _follow_without_gap(server: ServerProcess, padding: int) -> None:
    fronts = front_pids(server.pid, WORKERS)
    # Per front: 2 producers and 6 followers, each on a connection of its own.
    per_front = channels_per_front(server.port, fronts, per_front=8)
    producers: list[Producer] = []
    early: list[tuple[str, pb_grpc.StreamsServiceStub]] = []
    late: list[tuple[str, pb_grpc.StreamsServiceStub]] = []
    for f, (front, chans) in enumerate(per_front.items()):
        stubs = [pb_grpc.StreamsServiceStub(c) for c in chans]
        producers += [Producer(f"p{f}.{i}", stubs[i], f * 10 + i, padding) for i in range(2)]
        early += [(f"front {front} #{i}", stubs[2 + i]) for i in range(3)]
        late += [(f"front {front} late #{i}", stubs[5 + i]) for i in range(3)]
    total = sum(p.records() for p in producers)
    in_segment = {
        s: sum(len(w.records) for p in producers for r in p.requests for w in r.writes
               if w.segment == s)
        for s in SEGMENTS
    }  # fmt: skip
    prefix_total = in_segment["a"] + in_segment["a/x"]

    def followers(named: list[tuple[str, pb_grpc.StreamsServiceStub]]) -> list[Follower]:
        kinds = (
            ("space", pb.ConsumeRequest(space=SPACE, follow=True, to_offset=total)),
            (
                "segment b",
                pb.ConsumeRequest(space=SPACE, segment="b", follow=True, to_offset=in_segment["b"]),
            ),
            (
                "prefix a",
                pb.ConsumeRequest(space=SPACE, segment_prefix="a", follow=True, limit=prefix_total),
            ),
        )
        # Each kind on each front: named holds 3 stubs per front, front by front.
        return [
            Follower(f"{where}: {kinds[i % 3][0]}", stub, kinds[i % 3][1])
            for i, (where, stub) in enumerate(named)
        ]

    first = followers(early)
    for follower in first:
        follower.start()
    for follower in first:
        assert follower.open.wait(CALL_TIMEOUT), f"{follower.name} did not open"
    for producer in producers:
        producer.start()
    for producer in producers:
        assert producer.halfway.wait(FOLLOW_TIMEOUT), f"{producer.name} is stuck"
    second = followers(late)  # hand-off from stored records to the live tail
    for follower in second:
        follower.start()
    for thread in (*producers, *first, *second):
        thread.join(FOLLOW_TIMEOUT)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    errors = [f"{t.name}: {t.error!r}" for t in (*producers, *first, *second) if t.error]
    assert not errors, errors

    acked: dict[int, tuple[str, int, bytes]] = {}
    for producer in producers:
        acked.update(producer.acked())
    assert sorted(acked) == list(range(1, total + 1)), "positions are not dense"
    for follower in (*first, *second):
        got = [(r.position, r.segment, r.sequence, r.payload) for r in follower.got]
        want = [
            (position, *acked[position])
            for position in sorted(acked)
            if follower.request.segment in ("", acked[position][0])  # type: ignore[attr-defined]
            and acked[position][0].startswith(follower.request.segment_prefix)  # type: ignore[attr-defined]
        ]
        assert got == want, f"{follower.name}: {_first_difference(got, want)}"
    _close(per_front)


def _first_difference(got: list[tuple[object, ...]], want: list[tuple[object, ...]]) -> str:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"record {i}: got {g}, want {w}"
    return f"got {len(got)} records, want {len(want)}"


def test_a_write_acked_by_one_front_is_read_at_once_through_the_other(
    server: ServerProcess,
) -> None:
    fronts = front_pids(server.pid, WORKERS)
    per_front = channels_per_front(server.port, fronts)
    one, other = (pb_grpc.StreamsServiceStub(chans[0]) for chans in per_front.values())
    # A follower on `other` keeps the segment in that front's tail window: reads
    # there must not be served from a window the pump has not filled yet.
    follower = Follower(
        "follower", other, pb.ConsumeRequest(space="rw", segment="s", follow=True, to_offset=200)
    )
    follower.start()
    assert follower.open.wait(CALL_TIMEOUT)
    for n in range(1, 201):
        writer, reader = (one, other) if n % 2 else (other, one)
        ack = writer.Produce(
            pb.ProduceRequest(
                space="rw", writes=[pb.SegmentWrite(segment="s", records=[_record(n)])]
            ),
            timeout=CALL_TIMEOUT,
        )
        assert ack.acks[0].first_sequence == n
        peek = reader.Peek(pb.PeekRequest(space="rw", segment="s"), timeout=CALL_TIMEOUT)
        assert peek.record.sequence == n, f"Peek through the other front after ack {n}"
        read = list(
            reader.Consume(
                pb.ConsumeRequest(space="rw", segment="s", from_offset=n), timeout=CALL_TIMEOUT
            )
        )
        assert [r.sequence for resp in read for r in resp.records] == [n], f"read after ack {n}"
        info = reader.GetSegment(pb.GetSegmentRequest(space="rw", segment="s"))
        assert info.segment.last_sequence == n, f"GetSegment after ack {n}"
        reader.Commit(pb.CommitRequest(consumer="c", space="rw", segment="s", offset=n))
        offset = writer.GetOffset(pb.GetOffsetRequest(consumer="c", space="rw", segment="s"))
        assert offset.offset == n, f"GetOffset through the other front after commit {n}"
    follower.join(FOLLOW_TIMEOUT)
    assert follower.error is None, follower.error
    assert [r.sequence for r in follower.got] == list(range(1, 201))
    _close(per_front)


def test_sighup_reload_ends_streams_on_every_front(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    tokens = tmp_path / "tokens.json"
    everyone = [{"token": "admin", "spaces": ["*"], "access": ["read", "write"]}]
    write_tokens(tokens, [*everyone, {"token": "gone", "spaces": ["*"], "access": ["read"]}])
    with ServerProcess(data, workers=WORKERS, flags=["--auth-tokens", str(tokens)]) as server:
        server.start()
        fronts = front_pids(server.pid, WORKERS)
        per_front = channels_per_front(server.port, fronts, per_front=2)
        streams = []
        for chans in per_front.values():
            for channel, token in zip(chans, ("gone", "admin"), strict=True):
                stub = pb_grpc.StreamsServiceStub(channel)
                call = stub.Consume(
                    pb.ConsumeRequest(space="h", follow=True),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=FOLLOW_TIMEOUT,
                )
                call.initial_metadata()  # open, and checked against the old file
                streams.append((token, call))
        write_tokens(tokens, everyone)
        server.send(signal.SIGHUP)
        for token, call in streams:
            if token == "gone":
                with pytest.raises(grpc.RpcError) as ended:
                    next(iter(call))
                assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The streams of the token that stays are still open on both fronts.
        admin = (("authorization", "Bearer admin"),)
        for chans in per_front.values():
            pb_grpc.StreamsServiceStub(chans[0]).Produce(
                pb.ProduceRequest(
                    space="h", writes=[pb.SegmentWrite(segment="s", records=[_record(0)])]
                ),
                metadata=admin,
                timeout=CALL_TIMEOUT,
            )
        for token, call in streams:
            if token == "admin":
                first = next(iter(call))
                assert first.records[0].payload == _record(0).payload
                call.cancel()
        _close(per_front)


def _produce(stub: pb_grpc.StreamsServiceStub, space: str, segment: str, n: int) -> None:
    records = [_record(i) for i in range(n)]
    stub.Produce(
        pb.ProduceRequest(space=space, writes=[pb.SegmentWrite(segment=segment, records=records)]),
        timeout=CALL_TIMEOUT,
    )


def _sequences(stub: pb_grpc.StreamsServiceStub, space: str, segment: str = "") -> list[int]:
    request = pb.ConsumeRequest(space=space, segment=segment, from_offset=1)
    return [
        r.sequence for resp in stub.Consume(request, timeout=CALL_TIMEOUT) for r in resp.records
    ]


def test_a_removal_acked_by_one_front_is_seen_at_once_through_the_other(
    server: ServerProcess,
) -> None:
    """The other front's tail holds the records (a follower keeps them in its
    window): after an acked Trim, DeleteSegment or DeleteSpace through one
    front, no read, peek or info through the other may show what was removed."""
    fronts = front_pids(server.pid, WORKERS)
    per_front = channels_per_front(server.port, fronts, per_front=2)
    (one, _), (other, watcher) = (
        [pb_grpc.StreamsServiceStub(c) for c in chans] for chans in per_front.values()
    )
    for round_ in range(5):
        space = f"rm{round_}"
        _produce(one, space, "s", 100)
        _produce(one, space, "t", 10)
        # A follower on the other front: its tail window now holds both segments.
        follower = Follower(
            "window", watcher, pb.ConsumeRequest(space=space, follow=True, to_offset=110)
        )
        follower.start()
        follower.join(FOLLOW_TIMEOUT)
        assert len(follower.got) == 110, follower.error
        assert _sequences(other, space, "s") == list(range(1, 101))  # read once: cached

        one.Trim(pb.TrimRequest(space=space, segment="s", before_offset=60), timeout=CALL_TIMEOUT)
        assert _sequences(other, space, "s") == list(range(60, 101))
        assert (
            other.GetSegment(
                pb.GetSegmentRequest(space=space, segment="s"), timeout=CALL_TIMEOUT
            ).segment.first_sequence
            == 60
        )
        spaced = [r.position for resp in other.Consume(
            pb.ConsumeRequest(space=space, from_offset=1), timeout=CALL_TIMEOUT
        ) for r in resp.records]  # fmt: skip
        assert spaced[:1] == [60] and spaced[-10:] == list(range(101, 111))

        one.DeleteSegment(pb.DeleteSegmentRequest(space=space, segment="t"), timeout=CALL_TIMEOUT)
        assert _sequences(other, space, "t") == []
        assert [s.name for s in other.ListSegments(
            pb.ListSegmentsRequest(space=space), timeout=CALL_TIMEOUT
        ).segments] == ["s"]  # fmt: skip

        one.DeleteSpace(pb.DeleteSpaceRequest(space=space), timeout=CALL_TIMEOUT)
        assert _sequences(other, space) == []
        with pytest.raises(grpc.RpcError) as gone:
            other.Peek(pb.PeekRequest(space=space), timeout=CALL_TIMEOUT)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        # Numbers are never reused: a new write through the other front goes on.
        _produce(other, space, "s", 1)
        assert _sequences(one, space, "s") == [101]
    _close(per_front)


def test_followers_coming_and_going_on_a_front_miss_nothing(server: ServerProcess) -> None:
    """One front's followers of a segment start and stop all the time (its
    subscription to the writer's pump is taken and released again and again)
    while a producer writes through the other front: every follower gets every
    record from where it started, in order, without a gap."""
    fronts = front_pids(server.pid, WORKERS)
    per_front = channels_per_front(server.port, fronts, per_front=4)
    producer_front, follower_front = per_front.values()
    writer = pb_grpc.StreamsServiceStub(producer_front[0])
    readers = [pb_grpc.StreamsServiceStub(c) for c in follower_front]
    transactions = 600
    last = sum(1 + n % 3 for n in range(transactions))  # the segment's last sequence
    problems: list[str] = []

    def produce() -> None:
        for n in range(transactions):
            _produce(writer, "churn", "s", 1 + n % 3)

    def follow(stub: pb_grpc.StreamsServiceStub, seed: int) -> None:
        rng = random.Random(seed)
        start = 1
        try:
            while start <= last:
                want = min(rng.randint(1, 40), last - start + 1)
                request = pb.ConsumeRequest(
                    space="churn", segment="s", from_offset=start, follow=True, limit=want
                )
                got = [r.sequence for resp in stub.Consume(request, timeout=FOLLOW_TIMEOUT)
                       for r in resp.records]  # fmt: skip
                if got != list(range(start, start + want)):
                    problems.append(f"from {start}, {want} records: got {got}")
                    return
                # Mostly go on where it stopped, now and then start again further back.
                start += want if rng.random() < 0.8 else -min(start - 1, rng.randint(0, 50))
        except grpc.RpcError as err:
            problems.append(f"follower {seed} from {start}: {err.code()} {err.details()}")

    threads = [threading.Thread(target=produce, daemon=True)]
    threads += [
        threading.Thread(target=follow, args=(stub, i), daemon=True)
        for i, stub in enumerate(readers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(FOLLOW_TIMEOUT)
        assert not thread.is_alive(), "a thread did not finish"
    assert not problems, problems
    _close(per_front)


def _at_once(stubs: list[pb_grpc.StreamsServiceStub], request: pb.ProduceRequest) -> list[object]:
    """Sends ``request`` through every stub at the same moment; the answers
    (or errors) in stub order."""
    start = threading.Barrier(len(stubs))
    answers: list[object] = [None] * len(stubs)

    def send(i: int) -> None:
        start.wait()
        try:
            answers[i] = stubs[i].Produce(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:  # reported by the caller
            answers[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(stubs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT * 2)
    return answers


def test_one_transaction_sent_through_both_fronts_at_once_is_written_once(
    server: ServerProcess,
) -> None:
    """A client that retries a Produce on a new connection while the first is
    still in flight, the two landing on different fronts: one is written, the
    other answered duplicate=true with the same numbers, and the store has it once."""
    fronts = front_pids(server.pid, WORKERS)
    per_front = channels_per_front(server.port, fronts)
    stubs = [pb_grpc.StreamsServiceStub(chans[0]) for chans in per_front.values()]
    rounds = 40
    for n in range(rounds):
        request = pb.ProduceRequest(
            space="once",
            writes=[
                pb.SegmentWrite(segment="s", records=[_record(n), _record(n)]),
                pb.SegmentWrite(segment=f"t{n % 3}", records=[_record(n)]),
            ],
            transaction_id=f"tx-{n}",
        )
        answers = _at_once(stubs, request)
        acks = [a for a in answers if isinstance(a, pb.ProduceResponse)]
        assert len(acks) == len(stubs), f"round {n}: {answers}"
        assert sorted(a.duplicate for a in acks) == [False, True], f"round {n}: {acks}"
        first, again = sorted(acks, key=lambda a: a.duplicate)
        assert (again.first_position, again.last_position, list(again.acks)) == (
            first.first_position,
            first.last_position,
            list(first.acks),
        ), f"round {n}: the duplicate's numbers differ"
    positions = [r.position for resp in stubs[0].Consume(
        pb.ConsumeRequest(space="once", from_offset=1), timeout=CALL_TIMEOUT
    ) for r in resp.records]  # fmt: skip
    assert positions == list(range(1, 3 * rounds + 1)), "a transaction was written twice"
    _close(per_front)


def test_restarts_on_the_same_port_after_kill_9_or_sigterm(tmp_path: Path) -> None:
    """As an orchestrator restarts a pod: the same --listen port, at once,
    after a kill -9 of the writer or a SIGTERM; every start serves the port
    through both fronts, and every acknowledged record is there."""
    data = tmp_path / "data"
    data.mkdir()
    server = SpreadServer(data, port=free_port(), workers=WORKERS)
    written = 0
    try:
        server.start()
        for life in range(4):
            assert server.port == server.listen_port
            for _ in range(4):  # the stub takes turns over both fronts
                _produce(server.stub, "fixed", "s", 1)
                written += 1
            assert _sequences(server.stub, "fixed", "s") == list(range(1, written + 1))
            if life % 2:
                assert server.stop() == 0
            else:
                server.kill()
            server.start()
        assert _sequences(server.stub, "fixed", "s") == list(range(1, written + 1))
    finally:
        server.close()
