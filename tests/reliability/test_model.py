"""Model-based testing: random command sequences against a real server, a model and an oracle.

A hypothesis `RuleBasedStateMachine` drives one real server subprocess per run (RocksDB
storage, fresh data directory) with random sequences of Produce (1 to 3 segments from a small pool
with prefix pairs, right and wrong expected_sequence, transaction ids reused with the
same and with different content, invalid shapes), Consume (every start, bounds, batch
sizes, segment or whole space, follow with a reachable bound), Peek, Commit (with and
without compare-and-set, past the end), GetOffset, paged ListSpaces/ListSegments, the
data lifecycle (Trim by offset and by timestamp of a segment or a space, DeleteSegment with
and without expected_sequence, DeleteSpace, ConfigureSpace, GetSpace, GetSegment; reads,
peeks, lists, commits and produces after them, ``streams-start`` of every Consume), and
restarts (SIGTERM and kill -9). Every answer, values and status codes, is compared with
a small in-memory model written from the contract (shared/contract/v1.md) and the
README's choices where the contract is silent.

The oracle: each call also goes to a second server, in this process, on the memory
backend (``--storage memory``, the port's reference implementation), which is never
restarted; the RocksDB server's answer must equal the oracle's, operation by operation
(status code, message and every field, responses cut alike). The oracle's clock is
pinned to the timestamp the RocksDB server gave each transaction, so that its answers
can be equal.

Timestamps cannot be predicted: the model takes each transaction's timestamp from its
ack, then checks it never decreases along positions and is the one timestamp of every
record of that transaction (reads, peeks, lists, duplicates, from_timestamp).

Retention passes are pushed out of the run (``--retention-interval`` of a day on both
servers): they run on each server's own clock, so they could not be compared call by
call; the contract tests check them. A server also runs a pass when it starts, so the
policies the run configures are ones no pass acts on within a run (a restart of the
RocksDB server would otherwise remove records the oracle keeps).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from streams import codec
from streams.v1 import streams_pb2 as pb
from tests.contract.helpers import ts_key
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE

# Small pools, so that commands collide. Prefix pairs: "a"/"ab", "m"/"m/x".
SPACES = ("m", "m/x", "é")
UNKNOWN_SPACE = "m/"  # never written: a prefix of "m/x", and "m" is a prefix of it
SEGMENTS = ("a", "ab", "b", "a:b")
UNKNOWN_SEGMENT = "a/"
CONSUMERS = ("c", "cd")
BAD_NAMES = ("bad\x00", "bad\x1f", "\x7f", "x" * 256)
RESERVED = "$r"  # readable and deletable, never written by a client
TXIDS = ("", "", "t1", "t2", "t3")
PAYLOADS = (b"", b"x", b"y" * 40, b"\x00\xff\xfe")
METADATAS: tuple[dict[str, str], ...] = ({}, {"k": "v"}, {"": "empty key", "k": "w"})
DEFAULT_BATCH = 1000  # README: records per Consume response when max_batch is 0
CALL_TIMEOUT = 10.0
RETENTION_INTERVAL = 86_400.0  # no retention pass within a run
NANOS = 1_000_000_000

Ts = tuple[int, int]


def valid_name(name: str) -> bool:
    """Contract: UTF-8, 1 to 255 bytes, no U+0000-U+001F or U+007F."""
    raw = name.encode()
    return 1 <= len(raw) <= 255 and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def written_name(name: str) -> bool:
    """Contract, "Reserved names": a client never writes a name starting with $."""
    return valid_name(name) and not name.startswith("$")


def call(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    """(OK, result) or (code, details)."""
    try:
        return OK, fn()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""


class PinnedClock:
    """The oracle's clock: it reads what the test last set."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@dataclasses.dataclass(frozen=True)
class MRec:
    """A record as the model sees it (metadata as sorted pairs)."""

    space: str
    segment: str
    sequence: int
    position: int
    payload: bytes
    metadata: tuple[tuple[str, str], ...]
    txid: str
    ts: Ts


def body_bytes(r: MRec) -> int:
    """SpaceInfo/SegmentInfo ``bytes`` of one record: its body as the client sent it."""
    body = pb.RecordInput(payload=r.payload, metadata=dict(r.metadata))
    return len(body.SerializeToString(deterministic=True))


# A stored config as the model sees it: None (a config with no retention, the
# defaults apply) or (max_age ns, max_records_per_segment, max_bytes).
MConfig = tuple[int, int, int] | None


def config_of(message: pb.SpaceConfig) -> MConfig:
    if not message.HasField("retention"):
        return None
    r = message.retention
    return (r.max_age.seconds * NANOS + r.max_age.nanos, r.max_records_per_segment, r.max_bytes)


def space_info(s: pb.SpaceInfo) -> tuple[object, ...]:
    """A SpaceInfo as Model.space_info gives it."""
    return (
        s.name,
        s.last_position,
        ts_key(s.last_timestamp),
        s.first_position,
        s.record_count,
        s.bytes,
        s.HasField("config"),
        config_of(s.config) if s.HasField("config") else None,
    )


def segment_info(s: pb.SegmentInfo) -> tuple[object, ...]:
    return (
        s.name,
        s.last_sequence,
        s.last_position,
        ts_key(s.last_timestamp),
        s.first_sequence,
        s.record_count,
        s.bytes,
    )


def seen(r: pb.Record) -> MRec:
    return MRec(
        r.space,
        r.segment,
        r.sequence,
        r.position,
        r.payload,
        tuple(sorted(r.metadata.items())),
        r.transaction_id,
        ts_key(r.timestamp),
    )


def writes_key(req: pb.ProduceRequest) -> tuple[object, ...]:
    """Every field of `writes`: a repeat must match it exactly to be a duplicate."""
    return tuple(
        (
            w.segment,
            tuple((r.payload, tuple(sorted(r.metadata.items()))) for r in w.records),
            w.expected_sequence if w.HasField("expected_sequence") else None,
        )
        for w in req.writes
    )


def ack_numbers(resp: pb.ProduceResponse) -> tuple[object, ...]:
    return (
        [(a.segment, a.first_sequence, a.last_sequence) for a in resp.acks],
        resp.first_position,
        resp.last_position,
        ts_key(resp.timestamp),
    )


class Model:
    """The contract, in memory. Logs keep every record ever written (numbers are
    never reused); ``removed`` holds the positions trims and deletes took."""

    def __init__(self) -> None:
        self.space_log: dict[str, list[MRec]] = {}
        self.seg_log: dict[tuple[str, str], list[MRec]] = {}
        self.txns: dict[tuple[str, str], tuple[tuple[object, ...], pb.ProduceResponse]] = {}
        self.offsets: dict[tuple[str, str, str], int] = {}
        self.removed: set[tuple[str, int]] = set()  # (space, position)
        # Written or configured (and not deleted since): GetSpace finds it.
        self.spaces: set[str] = set()
        self.deleted_segments: set[tuple[str, str]] = set()
        # Deleted and neither written nor configured since: commits to them are NOT_FOUND.
        self.deleted_spaces: set[str] = set()
        self.configs: dict[str, MConfig] = {}  # configured spaces

    def log(self, space: str, segment: str) -> list[MRec]:
        """Every record ever written to the target."""
        if segment:
            return self.seg_log.get((space, segment), [])
        return self.space_log.get(space, [])

    def target(self, space: str, segment: str) -> list[MRec]:
        """The retained records of the target."""
        return [r for r in self.log(space, segment) if (space, r.position) not in self.removed]

    def last(self, space: str, segment: str) -> int:
        return len(self.log(space, segment))

    def first(self, space: str, segment: str) -> int:
        """The first retained offset; last + 1 when none is retained."""
        kept = self.target(space, segment)
        if not kept:
            return self.last(space, segment) + 1
        return kept[0].sequence if segment else kept[0].position

    def found(self, space: str, segment: str) -> bool:
        """Trim's and GetSegment's idea of existing: written (or, for a space,
        configured) and not deleted since."""
        if segment:
            return (space, segment) in self.seg_log and (
                space,
                segment,
            ) not in self.deleted_segments
        return space in self.spaces

    def removable(self) -> list[tuple[str, str]]:
        """Segments with retained records, by name."""
        return sorted(
            (t for t in self.seg_log if self.target(*t)),
            key=lambda t: (t[0].encode(), t[1].encode()),
        )

    def segments_of(self, space: str) -> list[str]:
        """Listed segments, by name."""
        return sorted(
            (seg for (sp, seg) in self.seg_log if sp == space and self.found(sp, seg)),
            key=str.encode,
        )

    def last_ts(self, space: str) -> Ts | None:
        log = self.space_log.get(space)
        return log[-1].ts if log else None

    def timestamps(self) -> list[Ts]:
        return sorted({r.ts for log in self.space_log.values() for r in log})

    def at_or_after(self, space: str, segment: str, ts: Ts) -> int:
        """The offset of the first record stamped at or after ``ts``; last + 1 if none."""
        for r in self.log(space, segment):
            if r.ts >= ts:
                return r.sequence if segment else r.position
        return self.last(space, segment) + 1

    def remove(self, space: str, records: list[MRec]) -> None:
        self.removed.update((space, r.position) for r in records)

    def space_info(self, space: str) -> tuple[object, ...]:
        log = self.space_log.get(space, [])
        kept = self.target(space, "")
        return (
            space,
            len(log),
            log[-1].ts if log else (0, 0),
            self.first(space, ""),
            len(kept),
            sum(body_bytes(r) for r in kept),
            space in self.configs,
            self.configs.get(space),
        )

    def segment_info(self, space: str, segment: str) -> tuple[object, ...]:
        log = self.seg_log[(space, segment)]
        kept = self.target(space, segment)
        return (
            segment,
            len(log),
            log[-1].position,
            log[-1].ts,
            self.first(space, segment),
            len(kept),
            sum(body_bytes(r) for r in kept),
        )

    # ---- Produce --------------------------------------------------------------------

    def produce_check(self, req: pb.ProduceRequest) -> tuple[grpc.StatusCode, object]:
        """The expected outcome before anything is applied: validation, duplicate, CAS."""
        segments = [w.segment for w in req.writes]
        if (
            not written_name(req.space)
            or not req.writes
            or any(not w.records for w in req.writes)
            or any(not written_name(s) for s in segments)
            or len(set(segments)) != len(segments)
            or len(req.transaction_id.encode()) > 128
        ):
            return INVALID, None
        if req.transaction_id and (req.space, req.transaction_id) in self.txns:
            key, original = self.txns[(req.space, req.transaction_id)]
            if key == writes_key(req):
                return OK, original  # a duplicate
            return EXISTS, req.transaction_id
        mismatches = [
            (w.segment, self.last(req.space, w.segment))
            for w in req.writes
            if w.HasField("expected_sequence")
            and w.expected_sequence != self.last(req.space, w.segment)
        ]
        if mismatches:
            return FAILED, mismatches
        return OK, None

    def expected_numbers(self, req: pb.ProduceRequest) -> tuple[object, ...]:
        acks = []
        for w in req.writes:
            first = self.last(req.space, w.segment) + 1
            acks.append((w.segment, first, first + len(w.records) - 1))
        first_position = self.last(req.space, "") + 1
        count = sum(len(w.records) for w in req.writes)
        return acks, first_position, first_position + count - 1

    def apply(self, req: pb.ProduceRequest, resp: pb.ProduceResponse) -> None:
        space = req.space
        log = self.space_log.setdefault(space, [])
        ts = ts_key(resp.timestamp)
        for w in req.writes:
            seg = self.seg_log.setdefault((space, w.segment), [])
            for r in w.records:
                rec = MRec(
                    space,
                    w.segment,
                    len(seg) + 1,
                    len(log) + 1,
                    r.payload,
                    tuple(sorted(r.metadata.items())),
                    req.transaction_id,
                    ts,
                )
                seg.append(rec)
                log.append(rec)
            self.deleted_segments.discard((space, w.segment))
        self.spaces.add(space)
        self.deleted_spaces.discard(space)
        if req.transaction_id:
            self.txns[(space, req.transaction_id)] = (writes_key(req), resp)


class StreamsMachine(RuleBasedStateMachine):
    """One server subprocess per run; every answer checked against `Model` and the oracle."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="streams-model-"))
        data = self.tmp / "data"
        data.mkdir()
        # One page-token key for both servers, so that their tokens are equal too.
        key = self.tmp / "page-token.key"
        key.write_bytes(os.urandom(32))
        self.server = ServerProcess(
            data,
            self.tmp / "server.log",
            flags=[
                "--page-token-key",
                str(key),
                "--retention-interval",
                str(RETENTION_INTERVAL),
            ],
        )
        self.server.start()
        self.oracle_clock = PinnedClock()
        self.oracle = InProcessServer(
            self.tmp / "oracle",
            clock=self.oracle_clock,
            storage="memory",
            page_token_key=key,
            retention_interval=RETENTION_INTERVAL,
        )
        resp = self.stub.ListSpaces(pb.ListSpacesRequest(), timeout=CALL_TIMEOUT)
        assert list(resp.spaces) == [] and resp.next_page_token == ""
        self.model = Model()
        self.sent: list[bytes] = []  # Produce requests with a transaction id, for replays
        self.steps_since_restart = 0
        self.restarts = 0

    def teardown(self) -> None:
        try:
            self.server.close()
            self.oracle.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def stub(self) -> Any:
        return self.server.stub

    def both(self, what: str, fn: Callable[[Any], Any]) -> tuple[grpc.StatusCode, Any]:
        """``fn`` on the RocksDB server's stub and on the oracle's: their answers
        must be equal. Returns the RocksDB server's."""
        got = call(lambda: fn(self.stub))
        want = call(lambda: fn(self.oracle.stub))
        assert got == want, f"{what}: the RocksDB server answered {got}, the oracle {want}"
        return got

    @initialize(data=st.data())
    def some_records(self, data: st.DataObject) -> None:
        """A few plain transactions to start from, so that reads have something to read."""
        for i in range(data.draw(st.integers(0, 4), label="initial transactions")):
            space = data.draw(st.sampled_from(SPACES), label="space")
            segments = data.draw(
                st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=2, unique=True),
                label="segments",
            )
            writes = [
                pb.SegmentWrite(
                    segment=seg,
                    records=[
                        pb.RecordInput(payload=f"init {i} {seg} {j}".encode())
                        for j in range(data.draw(st.integers(1, 3), label="records"))
                    ],
                )
                for seg in segments
            ]
            self._produce(pb.ProduceRequest(space=space, writes=writes))

    @invariant()
    def count_steps(self) -> None:
        self.steps_since_restart += 1

    # ---- Produce --------------------------------------------------------------------

    @rule(data=st.data())
    def produce(self, data: st.DataObject) -> None:
        space = data.draw(st.sampled_from(SPACES), label="space")
        shape = data.draw(
            st.sampled_from(
                ("ok",) * 15 + ("no_writes", "no_records", "segment_twice", "bad_name", "long_txid")
            ),
            label="shape",
        )
        n = data.draw(st.integers(1, 3), label="segments")
        segments = data.draw(
            st.lists(st.sampled_from(SEGMENTS), min_size=n, max_size=n, unique=True),
            label="segment names",
        )
        writes = []
        for seg in segments:
            inputs = data.draw(
                st.lists(
                    st.tuples(st.sampled_from(PAYLOADS), st.sampled_from(range(len(METADATAS)))),
                    min_size=1,
                    max_size=3,
                ),
                label=f"records of {seg}",
            )
            w = pb.SegmentWrite(
                segment=seg,
                records=[pb.RecordInput(payload=p, metadata=METADATAS[m]) for p, m in inputs],
            )
            last = self.model.last(space, seg)
            check = data.draw(
                st.sampled_from(("none", "none", "none", "right", "right", "wrong")),
                label=f"check {seg}",
            )
            if check == "right":
                w.expected_sequence = last
            elif check == "wrong":
                w.expected_sequence = data.draw(
                    st.sampled_from(
                        [x for x in (0, last - 1, last + 1, last + 7) if x >= 0 and x != last]
                    ),
                    label=f"wrong expected_sequence {seg}",
                )
            writes.append(w)
        txid = data.draw(st.sampled_from(TXIDS), label="transaction_id")
        if shape == "no_writes":
            writes = []
        elif shape == "no_records":
            del writes[-1].records[:]
        elif shape == "segment_twice":
            writes.append(pb.SegmentWrite(segment=writes[0].segment, records=[pb.RecordInput()]))
        elif shape == "bad_name":
            bad = data.draw(st.sampled_from(("", *BAD_NAMES, RESERVED)), label="bad name")
            if data.draw(st.booleans(), label="bad space"):
                space = bad
            else:
                writes[-1].segment = bad
        elif shape == "long_txid":
            txid = "t" * 129
        req = pb.ProduceRequest(space=space, writes=writes, transaction_id=txid)
        self._produce(req)

    @rule(data=st.data())
    def produce_more(self, data: st.DataObject) -> None:
        """Produce twice as often as the other rules: removals need something to remove."""
        self.produce(data)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """The same request again, byte for byte (a client retry)."""
        raw = data.draw(st.sampled_from(self.sent), label="replayed request")
        self._produce(pb.ProduceRequest.FromString(raw))

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def reuse_id(self, data: st.DataObject) -> None:
        """A sent transaction_id again, with one field of `writes` changed."""
        req = pb.ProduceRequest.FromString(
            data.draw(st.sampled_from(self.sent), label="request to change")
        )
        change = data.draw(
            st.sampled_from(
                (
                    "payload",
                    "metadata",
                    "extra record",
                    "expected_sequence",
                    "segment order",
                    "drop write",
                )
            ),
            label="change",
        )
        w = req.writes[0]
        if change == "payload":
            w.records[0].payload += b"!"
        elif change == "metadata":
            w.records[0].metadata["changed"] = "yes"
        elif change == "extra record":
            w.records.add(payload=b"extra")
        elif change == "expected_sequence":
            if w.HasField("expected_sequence"):
                w.ClearField("expected_sequence")
            else:
                w.expected_sequence = self.model.last(req.space, w.segment)
        elif change == "segment order" and len(req.writes) > 1:
            req.writes.append(pb.SegmentWrite(segment=w.segment, records=w.records))
            del req.writes[0]
        elif len(req.writes) > 1:
            del req.writes[-1]
        else:
            req.writes.add(segment="zz", records=[pb.RecordInput(payload=b"zz")])
        self._produce(req)

    def _produce(self, req: pb.ProduceRequest) -> None:
        code, want = self.model.produce_check(req)
        got_code, got = call(lambda: self.stub.Produce(req, timeout=CALL_TIMEOUT))
        if got_code == OK:
            self.oracle_clock.now = codec.timestamp_ns(got.timestamp)
        oracle = call(lambda: self.oracle.stub.Produce(req, timeout=CALL_TIMEOUT))
        assert (got_code, got) == oracle, (
            f"Produce {req}: the RocksDB server answered {got_code.name} {got}, the oracle {oracle}"
        )
        event(f"Produce {code.name}{' duplicate' if isinstance(want, pb.ProduceResponse) else ''}")
        assert got_code == code, f"Produce {req}: expected {code.name}, got {got_code.name}: {got}"
        if req.transaction_id and code != INVALID:
            self.sent.append(req.SerializeToString())
        if code == EXISTS:
            assert req.transaction_id in got, f"ALREADY_EXISTS should name the id: {got!r}"
            return
        if code == FAILED:
            assert any(seg in got and str(last) in got for seg, last in want), (
                f"FAILED_PRECONDITION should name a segment and its last sequence {want}: {got!r}"
            )
            return
        if code != OK:
            return
        if isinstance(want, pb.ProduceResponse):  # a duplicate: the original answer
            assert got.duplicate, f"a repeat of {req.transaction_id!r} must say duplicate=true"
            assert ack_numbers(got) == ack_numbers(want), (
                f"duplicate answer {ack_numbers(got)} differs from the original {ack_numbers(want)}"
            )
            return
        assert not got.duplicate, f"a first write answered duplicate=true: {req}"
        numbers = ack_numbers(got)[:3]
        assert numbers == self.model.expected_numbers(req), (
            f"Produce acked {numbers}, the model expects {self.model.expected_numbers(req)}"
        )
        last_ts = self.model.last_ts(req.space)
        assert last_ts is None or ts_key(got.timestamp) >= last_ts, (
            f"timestamp went back in {req.space!r}: {ts_key(got.timestamp)} < {last_ts}"
        )
        self.model.apply(req, got)

    # ---- Reads ----------------------------------------------------------------------

    def _target(self, data: st.DataObject) -> tuple[str, str]:
        """Mostly a written target (space or segment); sometimes any, unknown ones included."""
        known = sorted(
            {(sp, "") for sp in self.model.space_log} | set(self.model.seg_log),
            key=lambda t: (t[0].encode(), t[1].encode()),
        )
        if known and data.draw(st.sampled_from((True, True, True, False)), label="known"):
            return data.draw(st.sampled_from(known), label="target")
        space = data.draw(st.sampled_from((*SPACES, UNKNOWN_SPACE)), label="space")
        segment = data.draw(st.sampled_from(("", "", *SEGMENTS, UNKNOWN_SEGMENT)), label="segment")
        return space, segment

    def _stamp(self, data: st.DataObject, what: str) -> Timestamp:
        """A timestamp near the stored ones, or before or after all of them.

        The server's clock sets the timestamps, so what is drawn must not
        depend on how many there are (hypothesis replays draws): an index
        into them, and one nanosecond either side."""
        stamps = self.model.timestamps()
        pick = data.draw(st.integers(0, 63), label=f"{what} pick")
        delta = data.draw(st.sampled_from((-1, 0, 1)), label=f"{what} delta")
        if pick < 2 or not stamps:
            sec, nanos = ((0, 1), (4_000_000_000, 0))[pick % 2]
        else:
            s, n = stamps[pick % len(stamps)]
            sec, nanos = divmod(s * NANOS + n + delta, NANOS)
        return Timestamp(seconds=sec, nanos=nanos)

    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        space, segment = self._target(data)
        model = self.model
        items = model.target(space, segment)
        top = model.last(space, segment)

        def offset(r: MRec) -> int:
            return r.sequence if segment else r.position

        req = pb.ConsumeRequest(space=space, segment=segment)
        start_kind = data.draw(
            st.sampled_from(("none", "offset", "offset", "timestamp", "consumer", "end")),
            label="start",
        )
        start = 1  # the requested first offset
        if start_kind == "offset":
            req.from_offset = data.draw(st.integers(0, top + 2), label="from_offset")
            start = max(req.from_offset, 1)
        elif start_kind == "timestamp":
            req.from_timestamp.CopyFrom(self._stamp(data, "from_timestamp"))
            start = model.at_or_after(space, segment, ts_key(req.from_timestamp))
        elif start_kind == "consumer":
            consumer = data.draw(st.sampled_from(CONSUMERS), label="from_consumer")
            req.from_consumer = consumer
            start = model.offsets.get((consumer, space, segment), 0) + 1
        elif start_kind == "end":
            req.from_end = True
            start = top + 1
        if data.draw(st.booleans(), label="has to_offset"):
            req.to_offset = data.draw(st.integers(1, top + 2), label="to_offset")
        if data.draw(st.booleans(), label="has limit"):
            req.limit = data.draw(st.integers(1, 4), label="limit")
        req.max_batch = data.draw(
            st.sampled_from((0, 0, 1, 2, 3, 10_000, 10_001)), label="max_batch"
        )
        # Contract, "Numbers after deletion": a read starting before the first
        # retained record starts there; streams-start says where it starts.
        start = max(start, model.first(space, segment))
        want = [r for r in items if offset(r) >= start]
        if req.to_offset:
            want = [r for r in want if offset(r) <= req.to_offset]
        if req.limit:
            want = want[: req.limit]
        # follow=True only when the bound is reached by stored records: it must then end.
        if (
            want
            and start_kind != "end"
            and (
                (req.limit and len(want) == req.limit)
                or (req.to_offset and offset(want[-1]) == req.to_offset)
            )
        ):
            req.follow = data.draw(st.booleans(), label="follow")

        def read(stub: Any) -> tuple[str | None, list[pb.ConsumeResponse]]:
            stream = stub.Consume(req, timeout=CALL_TIMEOUT)
            responses = list(stream)
            return dict(stream.initial_metadata()).get("streams-start"), responses

        code, got = self.both("Consume", read)
        event(
            f"Consume {start_kind}: {'some' if want else 'no'} records"
            f"{', follow' if req.follow else ''}"
            f"{', after a removal' if items != model.log(space, segment) else ''}"
        )
        if req.max_batch > 10_000:
            assert code == INVALID, f"max_batch {req.max_batch}: {code.name} {got}"
            assert "max_batch" in got, got
            return
        assert code == OK, f"Consume {req}: {code.name} {got}"
        header, responses = got
        assert header == str(start), f"Consume {req}: streams-start {header}, want {start}"
        cap = req.max_batch or DEFAULT_BATCH
        for resp in responses:
            assert 1 <= len(resp.records) <= cap, f"a response of {len(resp.records)} records"
        records = [seen(r) for resp in responses for r in resp.records]
        assert records == want, f"Consume {req}:\n got  {records}\n want {want}"

    @rule(data=st.data())
    def consume_bad_name(self, data: st.DataObject) -> None:
        bad = data.draw(st.sampled_from(BAD_NAMES), label="bad name")
        field = data.draw(st.sampled_from(("space", "segment", "from_consumer")), label="field")
        req = pb.ConsumeRequest(space="m", segment="a")
        setattr(req, field, bad)
        code, got = self.both("Consume", lambda stub: list(stub.Consume(req, timeout=CALL_TIMEOUT)))
        assert code == INVALID, f"Consume with bad {field} {bad!r}: {code.name} {got}"

    @rule(data=st.data())
    def peek(self, data: st.DataObject) -> None:
        space, segment = self._target(data)
        items = self.model.target(space, segment)
        code, got = self.both(
            "Peek",
            lambda stub: stub.Peek(
                pb.PeekRequest(space=space, segment=segment), timeout=CALL_TIMEOUT
            ),
        )
        if not items:
            assert code == NOT_FOUND, f"Peek {space!r}/{segment!r} on nothing: {code.name} {got}"
            return
        assert code == OK, f"Peek {space!r}/{segment!r}: {code.name} {got}"
        assert seen(got.record) == items[-1]

    # ---- Offsets --------------------------------------------------------------------

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        space, segment = self._target(data)
        consumer = data.draw(
            st.sampled_from((*CONSUMERS, *CONSUMERS, "", "\x01")), label="consumer"
        )
        top = self.model.last(space, segment)
        key = (consumer, space, segment)
        stored = self.model.offsets.get(key)
        req = pb.CommitRequest(
            consumer=consumer,
            space=space,
            segment=segment,
            offset=data.draw(st.integers(0, top + 2), label="offset"),
        )
        cas = data.draw(st.sampled_from(("none", "none", "right", "wrong")), label="cas")
        if cas == "right":
            req.expected_offset = stored or 0
        elif cas == "wrong":
            req.expected_offset = data.draw(
                st.sampled_from(
                    [
                        x
                        for x in (0, 1, 2, (stored or 0) + 1, top + 5)
                        if x != (stored or 0) and not (x == 0 and stored is None)
                    ]
                ),
                label="wrong expected_offset",
            )
        code, got = self.both("Commit", lambda stub: stub.Commit(req, timeout=CALL_TIMEOUT))
        event(f"Commit {code.name}")
        if not valid_name(consumer):
            assert code == INVALID, f"Commit with consumer {consumer!r}: {code.name} {got}"
            return
        deleted = (
            (space, segment) in self.model.deleted_segments
            if segment
            else space in self.model.deleted_spaces
        )
        if deleted:  # a delete's removal of offsets sticks until the target is written
            assert code == NOT_FOUND, f"Commit to deleted {space!r}/{segment!r}: {code.name}"
            return
        if req.offset > top:  # README: OUT_OF_RANGE is checked before the CAS
            assert code == OUT_OF_RANGE, f"Commit {req} past {top}: {code.name} {got}"
            return
        if req.HasField("expected_offset") and req.expected_offset != (stored or 0):
            assert code == FAILED, f"Commit {req} with {stored} stored: {code.name} {got}"
            if stored is not None:
                assert str(stored) in got, f"should name the stored offset {stored}: {got!r}"
            return
        assert code == OK, f"Commit {req} ({stored} stored, last {top}): {code.name} {got}"
        assert got.offset == req.offset
        self.model.offsets[key] = req.offset

    @rule(data=st.data())
    def get_offset(self, data: st.DataObject) -> None:
        space, segment = self._target(data)
        consumer = data.draw(st.sampled_from((*CONSUMERS, "\x7f")), label="consumer")
        req = pb.GetOffsetRequest(consumer=consumer, space=space, segment=segment)
        code, got = self.both("GetOffset", lambda stub: stub.GetOffset(req, timeout=CALL_TIMEOUT))
        if not valid_name(consumer):
            assert code == INVALID, f"GetOffset {consumer!r}: {code.name} {got}"
            return
        stored = self.model.offsets.get((consumer, space, segment))
        if stored is None:
            assert code == NOT_FOUND, f"GetOffset {req} never committed: {code.name} {got}"
            return
        assert code == OK, f"GetOffset {req}: {code.name} {got}"
        assert got.offset == stored

    # ---- Lists ----------------------------------------------------------------------

    def _pages(
        self, data: st.DataObject, fetch: Callable[[Any, int, str], Any], field: str
    ) -> list[Any] | None:
        """All pages, or None after checking a bad page_size / token is refused."""
        page_size = data.draw(st.sampled_from((0, 1, 1, 2, 3, 1001, -1)), label="page_size")
        bad_token = data.draw(
            st.sampled_from(("", "", "", "", "garbage", "AAAA")), label="page_token"
        )
        if page_size < 0 or bad_token:
            code, got = self.both(field, lambda stub: fetch(stub, page_size, bad_token))
            assert code == INVALID, f"page_size {page_size} token {bad_token!r}: {code.name}"
            assert ("page_size" if page_size < 0 else "page_token") in got, got
            return None
        cap = min(page_size or 100, 1000)
        pages = []
        token = ""
        for _ in range(100):
            code, page = self.both(field, lambda stub, token=token: fetch(stub, page_size, token))
            assert code == OK, f"list page: {code.name} {page}"
            pages.append(page)
            assert len(getattr(page, field)) <= cap
            token = page.next_page_token
            if not token:
                break
        else:
            raise AssertionError("paging did not end")
        assert all(len(getattr(p, field)) == cap for p in pages[:-1]), (
            f"a page before the last one is not full: {[len(getattr(p, field)) for p in pages]}"
        )
        return [item for p in pages for item in getattr(p, field)]

    @rule(data=st.data())
    def list_spaces(self, data: st.DataObject) -> None:
        items = self._pages(
            data,
            lambda stub, size, token: stub.ListSpaces(
                pb.ListSpacesRequest(page_size=size, page_token=token), timeout=CALL_TIMEOUT
            ),
            "spaces",
        )
        if items is None:
            return
        got = [space_info(s) for s in items]
        want = [self.model.space_info(name) for name in sorted(self.model.spaces, key=str.encode)]
        assert got == want

    @rule(data=st.data())
    def list_segments(self, data: st.DataObject) -> None:
        space = data.draw(st.sampled_from((*SPACES, UNKNOWN_SPACE)), label="space")
        items = self._pages(
            data,
            lambda stub, size, token: stub.ListSegments(
                pb.ListSegmentsRequest(space=space, page_size=size, page_token=token),
                timeout=CALL_TIMEOUT,
            ),
            "segments",
        )
        if items is None:
            return
        got = [segment_info(s) for s in items]
        want = [self.model.segment_info(space, seg) for seg in self.model.segments_of(space)]
        assert got == want

    # ---- Lifecycle ------------------------------------------------------------------

    def _name(self, data: st.DataObject, name: str, label: str) -> str:
        """``name``, or now and then a bad or a reserved one."""
        kind = data.draw(st.sampled_from(("ok",) * 12 + ("bad", "reserved")), label=label)
        if kind == "bad":
            return data.draw(st.sampled_from(BAD_NAMES), label=f"bad {label}")
        return RESERVED if kind == "reserved" else name

    @rule(data=st.data())
    def trim(self, data: st.DataObject) -> None:
        space, segment = self._target(data)
        self._trim(data, self._name(data, space, "trim space"), segment)

    @precondition(lambda self: bool(self.model.removable()))
    @rule(data=st.data())
    def trim_retained(self, data: st.DataObject) -> None:
        """A trim of a segment, or of its space, that has retained records."""
        space, segment = data.draw(st.sampled_from(self.model.removable()), label="target")
        if data.draw(st.booleans(), label="whole space"):
            segment = ""
        self._trim(data, space, segment)

    def _trim(self, data: st.DataObject, space: str, segment: str) -> None:
        model = self.model
        req = pb.TrimRequest(space=space, segment=segment)
        top = model.last(space, segment)
        kind = data.draw(
            st.sampled_from(("offset", "offset", "offset", "timestamp", "timestamp", "none")),
            label="before",
        )
        before = 0
        if kind == "offset":
            # Mostly a small step past the first retained offset; sometimes all, or past it.
            first = model.first(space, segment)
            req.before_offset = data.draw(
                st.sampled_from(
                    (first, first + 1, first + 1, first + 2, top, top + 1, top + 2, 0, 1)
                ),
                label="before_offset",
            )
            before = req.before_offset
        elif kind == "timestamp":
            req.before_timestamp.CopyFrom(self._stamp(data, "before_timestamp"))
            before = model.at_or_after(space, segment, ts_key(req.before_timestamp))
        code, got = self.both("Trim", lambda stub: stub.Trim(req, timeout=CALL_TIMEOUT))
        event(f"Trim {kind} {'segment' if segment else 'space'}: {code.name}")
        if not written_name(space) or (segment and not written_name(segment)) or kind == "none":
            assert code == INVALID, f"Trim {req}: {code.name} {got}"
            return
        if not model.found(space, segment):
            assert code == NOT_FOUND, f"Trim {req} of a target that does not exist: {code.name}"
            return
        if before > top + 1:
            assert code == OUT_OF_RANGE, f"Trim {req} past {top} + 1: {code.name} {got}"
            assert str(before) in got, f"OUT_OF_RANGE should name {before}: {got!r}"
            return
        assert code == OK, f"Trim {req}: {code.name} {got}"
        offset_of = (lambda r: r.sequence) if segment else (lambda r: r.position)
        model.remove(space, [r for r in model.target(space, segment) if offset_of(r) < before])
        assert got.first_offset == model.first(space, segment), (
            f"Trim {req}: first_offset {got.first_offset}, want {model.first(space, segment)}"
        )

    @rule(data=st.data())
    def delete_segment(self, data: st.DataObject) -> None:
        space, segment = self._target(data)
        model = self.model
        if not segment:
            segment = data.draw(st.sampled_from((*SEGMENTS, UNKNOWN_SEGMENT)), label="segment")
        segment = self._name(data, segment, "delete segment")
        req = pb.DeleteSegmentRequest(space=space, segment=segment)
        last = model.last(space, segment)
        check = data.draw(st.sampled_from(("none", "none", "right", "wrong")), label="check")
        if check == "right":
            req.expected_sequence = last
        elif check == "wrong":
            req.expected_sequence = data.draw(
                st.sampled_from([x for x in (0, last - 1, last + 1) if x >= 0 and x != last]),
                label="wrong expected_sequence",
            )
        code, got = self.both(
            "DeleteSegment", lambda stub: stub.DeleteSegment(req, timeout=CALL_TIMEOUT)
        )
        event(f"DeleteSegment {check}: {code.name}")
        if not valid_name(segment):  # reserved names may be deleted
            assert code == INVALID, f"DeleteSegment {req}: {code.name} {got}"
            return
        if req.HasField("expected_sequence") and req.expected_sequence != last:
            assert code == FAILED, f"DeleteSegment {req} with last {last}: {code.name} {got}"
            assert str(last) in got, f"FAILED_PRECONDITION should name {last}: {got!r}"
            return
        assert code == OK, f"DeleteSegment {req}: {code.name} {got}"
        if model.found(space, segment):
            model.remove(space, model.target(space, segment))
            model.deleted_segments.add((space, segment))
            for key in [k for k in model.offsets if k[1:] == (space, segment)]:
                del model.offsets[key]

    @rule(data=st.data())
    def delete_space(self, data: st.DataObject) -> None:
        space, _ = self._target(data)
        space = self._name(data, space, "delete space")
        model = self.model
        code, got = self.both(
            "DeleteSpace",
            lambda stub: stub.DeleteSpace(pb.DeleteSpaceRequest(space=space), timeout=CALL_TIMEOUT),
        )
        event(f"DeleteSpace: {code.name}")
        if not valid_name(space):
            assert code == INVALID, f"DeleteSpace {space!r}: {code.name} {got}"
            return
        assert code == OK, f"DeleteSpace {space!r}: {code.name} {got}"
        if space in model.spaces:
            model.remove(space, model.target(space, ""))
            model.spaces.discard(space)
            model.deleted_spaces.add(space)
            model.configs.pop(space, None)
            model.deleted_segments.update(k for k in model.seg_log if k[0] == space)
            for key in [k for k in model.offsets if k[1] == space]:
                del model.offsets[key]

    @rule(data=st.data())
    def configure_space(self, data: st.DataObject) -> None:
        space = data.draw(st.sampled_from((*SPACES, UNKNOWN_SPACE)), label="space")
        space = self._name(data, space, "configure space")
        req = pb.ConfigureSpaceRequest(space=space)
        shape = data.draw(
            st.sampled_from(("retention", "retention", "empty", "unset", "negative", "nanos")),
            label="config",
        )
        if shape != "unset":
            req.config.SetInParent()
        if shape in ("retention", "negative", "nanos"):
            retention = req.config.retention
            retention.SetInParent()
            if data.draw(st.booleans(), label="max_age"):
                retention.max_age.seconds = data.draw(
                    st.sampled_from((3600, 10**9)), label="max_age s"
                )
                retention.max_age.nanos = data.draw(st.sampled_from((0, 5)), label="max_age ns")
            retention.max_records_per_segment = data.draw(
                st.sampled_from((0, 1000)), label="max_records_per_segment"
            )
            retention.max_bytes = data.draw(st.sampled_from((0, 10**6)), label="max_bytes")
            if shape == "negative":
                retention.max_age.seconds = -1
            elif shape == "nanos":
                retention.max_age.nanos = NANOS
        code, got = self.both(
            "ConfigureSpace", lambda stub: stub.ConfigureSpace(req, timeout=CALL_TIMEOUT)
        )
        event(f"ConfigureSpace {shape}: {code.name}")
        if not written_name(space) or shape in ("negative", "nanos"):
            assert code == INVALID, f"ConfigureSpace {req}: {code.name} {got}"
            if written_name(space):
                assert "max_age" in got, f"INVALID_ARGUMENT should name max_age: {got!r}"
            return
        assert code == OK, f"ConfigureSpace {req}: {code.name} {got}"
        assert got.config == req.config, f"ConfigureSpace {req}: answered {got.config}"
        self.model.spaces.add(space)
        self.model.deleted_spaces.discard(space)
        self.model.configs[space] = config_of(req.config)

    @rule(data=st.data())
    def get_space(self, data: st.DataObject) -> None:
        space = data.draw(st.sampled_from((*SPACES, UNKNOWN_SPACE, RESERVED)), label="space")
        code, got = self.both(
            "GetSpace",
            lambda stub: stub.GetSpace(pb.GetSpaceRequest(space=space), timeout=CALL_TIMEOUT),
        )
        if space not in self.model.spaces:
            assert code == NOT_FOUND, f"GetSpace {space!r}: {code.name} {got}"
            return
        assert code == OK, f"GetSpace {space!r}: {code.name} {got}"
        assert space_info(got.space) == self.model.space_info(space)

    @rule(data=st.data())
    def get_segment(self, data: st.DataObject) -> None:
        space, segment = self._target(data)
        if not segment:
            segment = data.draw(st.sampled_from((*SEGMENTS, UNKNOWN_SEGMENT)), label="segment")
        req = pb.GetSegmentRequest(space=space, segment=segment)
        code, got = self.both("GetSegment", lambda stub: stub.GetSegment(req, timeout=CALL_TIMEOUT))
        if not self.model.found(space, segment):
            assert code == NOT_FOUND, f"GetSegment {req}: {code.name} {got}"
            return
        assert code == OK, f"GetSegment {req}: {code.name} {got}"
        assert segment_info(got.segment) == self.model.segment_info(space, segment)

    # ---- Restarts -------------------------------------------------------------------

    @precondition(lambda self: self.steps_since_restart >= 8)
    @rule(kill=st.booleans())
    def restart(self, kill: bool) -> None:
        """SIGTERM (must exit 0) or kill -9: either way everything acked is kept."""
        if kill:
            self.server.kill9_and_restart()
        else:
            code = self.server.stop()
            assert code == 0, f"SIGTERM: the server exited with {code}"
            self.server.start()
        self.steps_since_restart = 0
        self.restarts += 1
        event("restart kill -9" if kill else "restart SIGTERM")


# Shrinking restarts a server per attempt and can take minutes: opt in with
# STREAMS_MODEL_SHRINK=1 (a failure is reported with its full, unshrunk steps otherwise).
_PHASES = (
    tuple(Phase)
    if os.environ.get("STREAMS_MODEL_SHRINK")
    else (Phase.explicit, Phase.reuse, Phase.generate)
)
StreamsMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("STREAMS_MODEL_EXAMPLES", "40")),
    stateful_step_count=40,
    deadline=None,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStreamsModel = StreamsMachine.TestCase
