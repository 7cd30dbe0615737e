"""Subscribe's deliveries as the service frames them from stored records."""

from __future__ import annotations

from streams import codec, group_wire
from streams.model import Record
from streams.v1 import streams_pb2 as pb


def stored(position: int, payload: bytes) -> bytes:
    body = pb.RecordInput(payload=payload).SerializeToString()
    return codec.stored(Record("s", f"seg{position % 3}", position, position, 5, "", body))


def test_deliveries_parse_back_in_order_with_their_attempts_and_cut_at_max_bytes() -> None:
    sizes = [10, 10, 200, 10, 20_000, 10, 10]
    records = [(stored(i, b"x" * size), 1 + i % 3) for i, size in enumerate(sizes, 1)]
    for max_bytes in (1, 300, 1 << 20):
        responses = group_wire.deliveries(records, max_bytes)
        got = []
        for data in responses:
            response = pb.SubscribeResponse.FromString(data)
            assert response.WhichOneof("kind") == "deliveries"
            assert len(data) <= max_bytes or len(response.deliveries.deliveries) == 1
            got += [(d.record, d.attempt) for d in response.deliveries.deliveries]
            assert all(
                raw in data
                for raw, _ in records[len(got) - len(response.deliveries.deliveries) : len(got)]
            )
        assert got == [(pb.Record.FromString(raw), attempt) for raw, attempt in records]
        if max_bytes == 1:
            assert len(responses) == len(records)
