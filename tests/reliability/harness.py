"""What the crash, power-loss and JetStream failure harnesses share: `Gate`
lets the crash harness pause every worker thread between kill -9 cycles;
`make_request` and `ack_shape_problem` are the producers' transactions and
the check of each ack's shape; `removal_request`, `send_removal` and
`retry_removals` are the trims and deletes run under load. The journal and
its checker are tests/support/journal.py."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator, Sequence

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.journal import UNKNOWN_OUTCOME, Journal, request_records

__all__ = [
    "Gate",
    "ack_shape_problem",
    "make_request",
    "removal_request",
    "retry_removals",
    "send_removal",
]

Removal = pb.TrimRequest | pb.DeleteSegmentRequest | pb.DeleteSpaceRequest
RETRY_TIMEOUT = 15.0


class Gate:
    """Workers `enter` before each call and `leave` after; `close` waits for all to leave."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = False
        self._inside = 0
        self.stopping = False

    @contextlib.contextmanager
    def inside(self) -> Iterator[bool]:
        """Yields False when the run is over (the worker should return)."""
        with self._cond:
            while not self._open and not self.stopping:
                self._cond.wait()
            if self.stopping:
                yield False
                return
            self._inside += 1
        try:
            yield True
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def shut(self) -> None:
        """No new entries from now on (calls already inside go on)."""
        with self._cond:
            self._open = False

    def close(self, timeout: float = 30.0) -> None:
        """No new entries; wait until every worker has left."""
        with self._cond:
            self._open = False
            ok = self._cond.wait_for(lambda: self._inside == 0, timeout)
        assert ok, f"{self._inside} worker call(s) still running {timeout} s after the gate closed"

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()


def make_request(
    rng: random.Random, txid: str, spaces: Sequence[str], segments: Sequence[str]
) -> pb.ProduceRequest:
    """A transaction over 1 to 3 distinct segments of one space; now and then a big one."""
    space = rng.choice(spaces)
    chosen = rng.sample(segments, rng.choice((1, 1, 2, 3)))
    writes = []
    for segment in chosen:
        count = rng.choice((1, 1, 2, 3)) if rng.random() < 0.97 else rng.randint(20, 50)
        records = []
        for i in range(count):
            size = rng.choice((0, 8, 100)) if rng.random() < 0.95 else rng.randint(1, 64 * 1024)
            payload = f"{txid}/{segment}/{i}:".encode() + rng.randbytes(size)
            metadata = {"tx": txid, "i": str(i)} if rng.random() < 0.5 else {}
            records.append(pb.RecordInput(payload=payload, metadata=metadata))
        writes.append(pb.SegmentWrite(segment=segment, records=records))
    return pb.ProduceRequest(space=space, writes=writes, transaction_id=txid)


def ack_shape_problem(
    req: pb.ProduceRequest, resp: pb.ProduceResponse, *, retry: bool = False
) -> str | None:
    """An ack must match the request's shape; only the answer to a retry may
    be a duplicate (the journal's checker then compares it with what is stored)."""
    if resp.duplicate and not retry:
        return "first attempt answered duplicate=true"
    if [a.segment for a in resp.acks] != [w.segment for w in req.writes]:
        return f"acks {[a.segment for a in resp.acks]} for writes {[w.segment for w in req.writes]}"
    for a, w in zip(resp.acks, req.writes, strict=True):
        if a.last_sequence - a.first_sequence + 1 != len(w.records) or a.first_sequence < 1:
            return f"ack {a} for {len(w.records)} records"
    if resp.last_position - resp.first_position + 1 != len(request_records(req)):
        return (
            f"positions {resp.first_position}..{resp.last_position} for "
            f"{len(request_records(req))} records"
        )
    return None


def removal_request(
    rng: random.Random, journal: Journal, spaces: Sequence[str], segments: Sequence[str]
) -> Removal | None:
    """A trim that keeps most of what was written (now and then all of it), a
    delete of a segment now and then, of a space rarely."""
    space = rng.choice(spaces)
    segment = rng.choice(segments)
    kind = rng.choices(
        ("trim segment", "trim space", "trim by time", "delete segment", "delete space"),
        (4, 3, 3, 1, 0.25),
    )[0]
    with journal.lock:
        top = (
            journal.acked_sequence[(space, segment)]
            if kind == "trim segment"
            else journal.acked_position[space]
        )
        stamps = [t.ack.timestamp for t in journal.txns.values() if t.ack and t.space == space]
    if kind == "delete space":
        return pb.DeleteSpaceRequest(space=space)
    if kind == "delete segment":
        req = pb.DeleteSegmentRequest(space=space, segment=segment)
        if rng.random() < 0.2:
            req.expected_sequence = journal.acked_sequence[(space, segment)]
        return req
    on = {"trim segment": segment, "trim space": ""}.get(kind, rng.choice((segment, "")))
    if kind == "trim by time":
        if not stamps:
            return None
        stamp = rng.choice(stamps)
        req = pb.TrimRequest(space=space, segment=on)
        req.before_timestamp.CopyFrom(stamp)
        req.before_timestamp.nanos = max(0, stamp.nanos + rng.choice((-1, 0, 1)))
        return req
    if top == 0:
        return None
    # Acked numbers are stored, so top + 1 is never past the end. Mostly a
    # trim that keeps a good part of what is there, so that the check of what
    # must be kept has records to check.
    before = top + 1 if rng.random() < 0.1 else max(1, int(top * rng.uniform(0.2, 0.9)))
    return pb.TrimRequest(space=space, segment=on, before_offset=before)


def send_removal(
    stub: pb_grpc.StreamsServiceStub, req: Removal, timeout: float
) -> tuple[int, bool] | str | None:
    """Sends one removal: (first offset, nothing removed) when answered,
    None when the outcome is unknown, an error text otherwise."""
    try:
        if isinstance(req, pb.TrimRequest):
            return stub.Trim(req, timeout=timeout).first_offset, False
        if isinstance(req, pb.DeleteSegmentRequest):
            stub.DeleteSegment(req, timeout=timeout)
        else:
            stub.DeleteSpace(req, timeout=timeout)
        return 0, False
    except grpc.RpcError as err:
        if err.code() in UNKNOWN_OUTCOME:
            return None
        if err.code() == grpc.StatusCode.NOT_FOUND and isinstance(req, pb.TrimRequest):
            return 0, True  # the target is deleted: nothing to trim
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION and req.HasField("expected_sequence"):
            return 0, True  # a write came first: nothing deleted
        return f"{type(req).__name__} {req}: {err.code()} {err.details()}"
    except ValueError:  # the channel was closed under us: unknown outcome
        return None


def retry_removals(stub: pb_grpc.StreamsServiceStub, journal: Journal, problems: list[str]) -> int:
    """Sends each unanswered removal again (workers paused): once it is
    answered, whatever the first try did is done. A delete goes again
    without its expected_sequence (the first try may have applied it)."""
    retried = 0
    for removal in journal.unanswered_removals():
        req = removal.request
        if isinstance(req, pb.DeleteSegmentRequest):
            req = pb.DeleteSegmentRequest(space=req.space, segment=req.segment)
        outcome = send_removal(stub, req, RETRY_TIMEOUT)
        if outcome is None or isinstance(outcome, str):
            problems.append(f"retry of {req}: {outcome or 'no answer'}")
        elif not outcome[1]:  # NOT_FOUND: left unknown (a delete came after it)
            journal.removal_acked(removal, outcome[0])
            retried += 1
    return retried
