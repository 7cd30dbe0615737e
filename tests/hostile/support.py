"""Raw-bytes calls to every RPC, and the checks that run after each attack."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streams.limits import Limits
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc

from .wire import records_of

SERVICE = "/streams.v1.StreamsService/"
STREAMING = {"Consume", "WatchSegments"}
RPCS = (
    "Produce",
    "Consume",
    "Peek",
    "Commit",
    "GetOffset",
    "ListSpaces",
    "ListSegments",
    "Trim",
    "DeleteSegment",
    "DeleteSpace",
    "ConfigureSpace",
    "GetSpace",
    "GetSegment",
    "WatchSegments",
    "CreateGroup",
    "GetGroup",
    "ListGroups",
    "DeleteGroup",
)
# What a client may be told about its request; INTERNAL, UNKNOWN (or DATA_LOSS)
# would mean the server broke on it.
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
DEADLINE = 30.0


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[bytes]


def call(channel: grpc.Channel, method: str, data: bytes) -> Outcome:
    """Sends ``data`` as the request of ``method``, as it is."""
    if method in STREAMING:
        stream = channel.unary_stream(
            SERVICE + method, request_serializer=None, response_deserializer=None
        )
        responses: list[bytes] = []
        call = stream(data, timeout=DEADLINE)
        try:
            for response in call:
                responses.append(response)
                if method == "WatchSegments" and _snapshot_complete(response):
                    # A watch goes on until cancelled: its snapshot is the answer.
                    call.cancel()
                    break
        except grpc.RpcError as err:
            return Outcome(err.code(), err.details() or "", responses)
        return Outcome(grpc.StatusCode.OK, "", responses)
    unary = channel.unary_unary(
        SERVICE + method, request_serializer=None, response_deserializer=None
    )
    try:
        return Outcome(grpc.StatusCode.OK, "", [unary(data, timeout=DEADLINE)])
    except grpc.RpcError as err:
        return Outcome(err.code(), err.details() or "", [])


def _snapshot_complete(response: bytes) -> bool:
    return pb.WatchSegmentsResponse.FromString(response).snapshot_complete


def assert_handled(outcome: Outcome, what: str) -> None:
    """OK, or a client error with a message: never INTERNAL, UNKNOWN or the like."""
    if outcome.code is grpc.StatusCode.OK:
        return
    assert outcome.code in CLIENT_ERRORS, f"{what}: {outcome.code.name}: {outcome.details}"
    assert outcome.details, f"{what}: {outcome.code.name} without a message"


@dataclass
class Expected:
    """What the server acknowledged for one position of a space."""

    segment: str
    sequence: int
    timestamp: Timestamp
    transaction_id: str
    payload: bytes
    metadata: dict[str, str]


@dataclass
class Ledger:
    """Every acknowledged record of the spaces under attack, by space and position."""

    spaces: dict[str, dict[int, Expected]] = field(default_factory=dict)

    def acked(self, sent: bytes, response: bytes) -> str:
        """Notes an acknowledged Produce (its bytes as sent and its response);
        returns its space."""
        # What the server accepted, read as it reads it: the known fields.
        request = pb.ProduceRequest.FromString(sent)
        ack = pb.ProduceResponse.FromString(response)
        space = self.spaces.setdefault(request.space, {})
        position = ack.first_position
        for write, segment_ack in zip(request.writes, ack.acks, strict=True):
            assert segment_ack.segment == write.segment
            assert segment_ack.last_sequence - segment_ack.first_sequence + 1 == len(write.records)
            for i, record in enumerate(write.records):
                expected = Expected(
                    write.segment,
                    segment_ack.first_sequence + i,
                    ack.timestamp,
                    request.transaction_id,
                    record.payload,
                    dict(record.metadata),
                )
                # A duplicate answers with the original's numbers: same records.
                assert space.setdefault(position, expected) == expected
                position += 1
        assert position - 1 == ack.last_position
        return request.space


def verify(channel: grpc.Channel, ledger: Ledger, space: str, lim: Limits) -> None:
    """Every stored record of ``space`` is what its Produce ack said, parses with
    the generated classes, and fits the record limit; a default generated client
    reads the space and each of its segments."""
    expected = ledger.spaces.get(space, {})
    outcome = call(channel, "Consume", pb.ConsumeRequest(space=space).SerializeToString())
    assert outcome.code is grpc.StatusCode.OK, f"{outcome.code.name}: {outcome.details}"
    stored = [record for response in outcome.responses for record in records_of(response)]
    assert len(stored) == len(expected), (len(stored), len(expected))
    for raw in stored:
        assert len(raw) <= lim.max_record_bytes, len(raw)
        record = pb.Record.FromString(raw)
        want = expected[record.position]
        assert (record.space, record.segment, record.sequence) == (
            space,
            want.segment,
            want.sequence,
        )
        assert record.timestamp == want.timestamp
        assert record.transaction_id == want.transaction_id
        assert (record.payload, dict(record.metadata)) == (want.payload, want.metadata)
    stub = streams_pb2_grpc.StreamsServiceStub(channel)
    read = [r for m in stub.Consume(pb.ConsumeRequest(space=space)) for r in m.records]
    assert [r.position for r in read] == sorted(expected)
    for segment in {e.segment for e in expected.values()}:
        records = [
            r
            for m in stub.Consume(pb.ConsumeRequest(space=space, segment=segment))
            for r in m.records
        ]
        assert [r.sequence for r in records] == sorted(
            e.sequence for e in expected.values() if e.segment == segment
        )
        first = records[0].timestamp
        found = [
            r
            for m in stub.Consume(
                pb.ConsumeRequest(space=space, segment=segment, from_timestamp=first)
            )
            for r in m.records
        ]
        assert [r.sequence for r in found] == [r.sequence for r in records]
