"""The dead-letter record of a parked record: its payload and metadata as they
were, plus where it came from and why it was parked (see the contract's
"Consumer groups")."""

from __future__ import annotations

from collections.abc import Sequence

from streams import codec
from streams.model import SegmentAppend, Transaction
from streams.v1 import streams_pb2 as pb

PREFIX = "streams-parked-"


def body(stored: bytes, attempts: int, reason: str) -> bytes:
    """The ``RecordInput`` body to append for the stored record ``stored``,
    delivered ``attempts`` times, last nacked with ``reason`` ("" if never);
    keys of the same names the record had are overwritten."""
    record = codec.parse_stored(stored)
    parked = pb.RecordInput.FromString(record.body)
    metadata = parked.metadata
    metadata[PREFIX + "space"] = record.space
    metadata[PREFIX + "segment"] = record.segment
    metadata[PREFIX + "sequence"] = str(record.sequence)
    metadata[PREFIX + "position"] = str(record.position)
    metadata[PREFIX + "attempts"] = str(attempts)
    metadata[PREFIX + "reason"] = reason
    return parked.SerializeToString(deterministic=True)


def transaction(space: str, segment: str, bodies: Sequence[bytes]) -> Transaction:
    """The dead-letter write of one settlement: one append, no transaction id."""
    return Transaction(space, (SegmentAppend(segment, tuple(bodies), None),), "", b"")
