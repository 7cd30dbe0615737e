"""Small shared helpers for the black-box contract tests (contract v1).

Everything here talks to the server through the generated sync stubs only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc

Stub = pb_grpc.StreamsServiceStub

MIB = 1024 * 1024
# The default client receive limit: every ConsumeResponse must stay under it.
CLIENT_RECEIVE_LIMIT = 4 * MIB

# One bad name per class the contract names: empty, too long (in bytes) and
# each edge of the control-character ranges U+0000-U+001F and U+007F.
BAD_NAMES: dict[str, str] = {
    "empty": "",
    "256_ascii": "a" * 256,
    "256_bytes_multibyte": "é€" * 51 + "a",  # 103 characters, 256 bytes
    "nul": "bad\x00name",
    "unit_separator_1f": "bad\x1fname",
    "del_7f": "bad\x7fname",
    "newline": "bad\nname",
    "tab": "\tname",
}
# The same without the empty name: for fields where empty means "whole space".
BAD_NONEMPTY_NAMES: dict[str, str] = {k: v for k, v in BAD_NAMES.items() if k != "empty"}


def unique(prefix: str = "t") -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def name_of_bytes(total: int, filler: str = "a", prefix: str = "") -> str:
    """A unique-enough name of exactly `total` UTF-8 bytes: prefix, fillers, ASCII pad."""
    name = prefix
    while len((name + filler).encode()) <= total:
        name += filler
    name += "a" * (total - len(name.encode()))
    assert len(name.encode()) == total
    return name


def rec(payload: bytes | str = b"x", metadata: dict[str, str] | None = None) -> pb.RecordInput:
    """One RecordInput."""
    if isinstance(payload, str):
        payload = payload.encode()
    return pb.RecordInput(payload=payload, metadata=metadata or {})


RecordLike = bytes | str | pb.RecordInput


def _records(payloads: Iterable[RecordLike]) -> list[pb.RecordInput]:
    return [p if isinstance(p, pb.RecordInput) else rec(p) for p in payloads]


def write(
    segment: str,
    payloads: Iterable[RecordLike],
    expected_sequence: int | None = None,
) -> pb.SegmentWrite:
    """One SegmentWrite; `expected_sequence` None leaves the optional field absent."""
    w = pb.SegmentWrite(segment=segment, records=_records(payloads))
    if expected_sequence is not None:
        w.expected_sequence = expected_sequence
    return w


def produce_writes(
    stub: Stub,
    space: str,
    writes: Sequence[pb.SegmentWrite],
    transaction_id: str = "",
) -> pb.ProduceResponse:
    """One Produce (one transaction) of several writes."""
    return stub.Produce(
        pb.ProduceRequest(space=space, writes=list(writes), transaction_id=transaction_id)
    )


def produce(
    stub: Stub,
    space: str,
    segment: str,
    payloads: Iterable[RecordLike] = (b"x",),
    *,
    expected_sequence: int | None = None,
    transaction_id: str = "",
) -> pb.ProduceResponse:
    """One Produce of one write."""
    return produce_writes(
        stub, space, [write(segment, payloads, expected_sequence)], transaction_id
    )


def produce_in_parts(
    stub: Stub, space: str, writes: Sequence[pb.SegmentWrite], max_records: int
) -> list[pb.ProduceResponse]:
    """The records of ``writes``, in order, in as few Produces as hold at most
    ``max_records`` records each (a write split where it must be; its
    ``expected_sequence``, if any, stays on its first part): for tests about
    something other than the records-per-Produce limit, which a backend may
    lower (the ``max_records`` fixture)."""
    responses: list[pb.ProduceResponse] = []
    part: list[pb.SegmentWrite] = []
    room = max_records
    for whole in writes:
        records = list(whole.records)
        first = True
        while records:
            if room == 0:
                responses.append(produce_writes(stub, space, part))
                part, room = [], max_records
            piece = pb.SegmentWrite(segment=whole.segment, records=records[:room])
            if first and whole.HasField("expected_sequence"):
                piece.expected_sequence = whole.expected_sequence
            part.append(piece)
            room -= len(piece.records)
            records = records[len(piece.records) :]
            first = False
    if part:
        responses.append(produce_writes(stub, space, part))
    return responses


def consume_responses(stub: Stub, space: str, segment: str = "", **fields: object) -> list:
    """Every ConsumeResponse of one (non-follow) Consume."""
    return list(stub.Consume(pb.ConsumeRequest(space=space, segment=segment, **fields)))


def consume_all(stub: Stub, space: str, segment: str = "", **fields: object) -> list[pb.Record]:
    """Every record of one (non-follow) Consume, checking each response is 1+ records."""
    records: list[pb.Record] = []
    for response in consume_responses(stub, space, segment, **fields):
        assert len(response.records) >= 1, "a ConsumeResponse must carry 1 to max_batch records"
        records.extend(response.records)
    return records


def seqs(records: Iterable[pb.Record]) -> list[int]:
    return [r.sequence for r in records]


def positions(records: Iterable[pb.Record]) -> list[int]:
    return [r.position for r in records]


def payloads_of(records: Iterable[pb.Record]) -> list[bytes]:
    return [r.payload for r in records]


def ts_key(ts: Timestamp) -> tuple[int, int]:
    """A Timestamp as a sortable (seconds, nanos) pair."""
    return (ts.seconds, ts.nanos)


def ts_plus(ts: Timestamp, nanos: int) -> Timestamp:
    """`ts` moved by `nanos` nanoseconds (either direction)."""
    total = ts.seconds * 1_000_000_000 + ts.nanos + nanos
    return Timestamp(seconds=total // 1_000_000_000, nanos=total % 1_000_000_000)


def assert_status(
    call: Callable[[], object],
    code: grpc.StatusCode,
    *words: str | tuple[str, ...],
) -> grpc.RpcError:
    """Runs `call` (draining it if it returns a stream) and checks it fails with `code`.

    Each of `words` must appear in the status message; a tuple means "any of these".
    """
    try:
        result = call()
        if isinstance(result, Iterator):
            got = list(result)
            raise AssertionError(f"expected {code.name}, the stream gave {len(got)} responses")
    except grpc.RpcError as err:
        assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
        details = err.details() or ""
        for word in words:
            options = word if isinstance(word, tuple) else (word,)
            assert any(o in details for o in options), (
                f"{code.name} message {details!r} should name {' or '.join(options)!r}"
            )
        return err
    raise AssertionError(f"expected {code.name}, the call succeeded: {result!r}")


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status ``call`` ends with (OK when it returns)."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK
