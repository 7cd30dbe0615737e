"""Trims racing producers, followers and consumers: numbers stay dense and
unique, a segment's retained records stay dense from its first sequence, and
no record that was never trimmed is missed by a reader. Threads meet on
events (acks, a barrier), never on sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable

from streams.v1 import streams_pb2 as pb

from .helpers import Stub, produce, seqs

ROUNDS = 200


def run_together(*jobs: Callable[[], None]) -> None:
    """Runs ``jobs`` in threads released at once; re-raises the first failure."""
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        start.wait()
        try:
            job()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]


class Acks:
    """The last sequence acknowledged so far, shared between threads."""

    def __init__(self) -> None:
        self.last = 0
        self.changed = threading.Condition()

    def acked(self, last: int) -> None:
        with self.changed:
            self.last = last
            self.changed.notify_all()

    def wait_past(self, seen: int) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.last > seen, timeout=30)
            return self.last


def producer(stub: Stub, space: str, acks: Acks) -> Callable[[], None]:
    def job() -> None:
        for i in range(1, ROUNDS + 1):
            ack = produce(stub, space, "a", [f"{i}"])
            # Dense, unique: one record per transaction, in order.
            assert ack.acks[0].first_sequence == i, (ack, i)
            acks.acked(i)

    return job


def trimmer(
    stub: Stub, space: str, acks: Acks, points: list[int], whole: bool
) -> Callable[[], None]:
    """Trims to a few records behind the last ack, each time one comes."""

    def job() -> None:
        seen = 0
        while seen < ROUNDS:
            seen = acks.wait_past(seen)
            point = max(1, seen - 3)
            segment = "" if whole else "a"
            first = stub.Trim(pb.TrimRequest(space=space, segment=segment, before_offset=point))
            assert first.first_offset >= point
            points.append(point)

    return job


def test_trims_racing_a_producer(stub: Stub, space: str) -> None:
    acks, points = Acks(), []
    run_together(producer(stub, space, acks), trimmer(stub, space, acks, points, whole=False))
    final = max(points)
    info = stub.GetSegment(pb.GetSegmentRequest(space=space, segment="a")).segment
    assert info.last_sequence == ROUNDS
    assert info.first_sequence == final
    assert info.record_count == ROUNDS - final + 1
    records = [
        r for m in stub.Consume(pb.ConsumeRequest(space=space, segment="a")) for r in m.records
    ]
    assert seqs(records) == list(range(final, ROUNDS + 1))
    assert [r.payload for r in records] == [f"{i}".encode() for i in range(final, ROUNDS + 1)]


def test_trims_racing_a_follower_and_a_producer(stub: Stub, space: str) -> None:
    """A follower of the segment and one of the space, while the space is
    trimmed behind the producer: each sees ascending numbers, and every record
    that was never trimmed."""
    acks, points = Acks(), []
    received: dict[str, list[pb.Record]] = {"a": [], "": []}
    ready = threading.Barrier(3)

    def follower(segment: str) -> Callable[[], None]:
        def job() -> None:
            call = stub.Consume(
                pb.ConsumeRequest(space=space, segment=segment, follow=True, to_offset=ROUNDS),
                timeout=60,
            )
            call.initial_metadata()  # the start is fixed: the follow is on
            ready.wait()
            for message in call:
                received[segment].extend(message.records)

        return job

    def produce_when_followed() -> None:
        ready.wait()
        producer(stub, space, acks)()

    run_together(
        follower("a"),
        follower(""),
        produce_when_followed,
        trimmer(stub, space, acks, points, whole=True),
    )
    final = max(points)
    for segment, numbers in (("a", seqs(received["a"])), ("", [r.position for r in received[""]])):
        assert numbers == sorted(set(numbers)), f"{segment!r}: not ascending or repeated"
        assert set(range(final, ROUNDS + 1)) <= set(numbers), f"{segment!r} missed a record"
        assert numbers[-1] == ROUNDS


def test_trims_racing_consumers(stub: Stub, space: str) -> None:
    """Reads from the start while the space is trimmed: every read sees a
    dense run from wherever it started to where it ended, never a hole."""
    for i in range(1, ROUNDS + 1):
        produce(stub, space, "a", [f"{i}"])
    reads: list[list[int]] = []
    done = threading.Event()

    def consumer() -> None:
        while not done.is_set():
            records = [
                r
                for m in stub.Consume(pb.ConsumeRequest(space=space, max_batch=7))
                for r in m.records
            ]
            reads.append([r.position for r in records])

    def trims() -> None:
        try:
            for point in range(2, ROUNDS + 2, 3):
                stub.Trim(pb.TrimRequest(space=space, before_offset=point))
        finally:
            done.set()

    run_together(consumer, consumer, trims)
    assert reads
    for positions in reads:
        # A read is cut in batches; each may start later (trimmed meanwhile),
        # but what a read returns has no hole except where a trim moved its start.
        assert positions == sorted(set(positions))
        if positions:
            assert positions[-1] == ROUNDS
