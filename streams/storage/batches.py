"""The two kinds of :class:`~streams.storage.port.RecordBatch`: records stored
framed for the wire (sent as they are), and domain records (framed on read).
"""

from __future__ import annotations

from collections.abc import Sequence

from streams import codec
from streams.model import Record


class FramedBatch:
    """Records already framed as a ``ConsumeResponse``'s ``records`` field: the
    RocksDB engine slices them from stored chunks, the tail from its windows."""

    __slots__ = ("count", "framed")

    def __init__(self, framed: bytes, count: int) -> None:
        self.framed = framed
        self.count = count

    def to_wire(self) -> bytes:
        return self.framed

    def records(self) -> Sequence[Record]:
        return [codec.parse_stored(raw) for raw in codec.split_framed(self.framed)]


EMPTY = FramedBatch(b"", 0)


class RecordList:
    """Domain records, framed when the service asks for the wire bytes."""

    __slots__ = ("_records", "_stored")

    def __init__(self, records: Sequence[Record], stored: Sequence[bytes] | None = None) -> None:
        """``stored``: the records' :func:`~streams.codec.stored` bytes, when the
        caller has already built them."""
        self._records = records
        self._stored = stored

    @property
    def count(self) -> int:
        return len(self._records)

    def to_wire(self) -> bytes:
        if self._stored is None:
            self._stored = [codec.stored(record) for record in self._records]
        return codec.consume_response(self._stored)

    def records(self) -> Sequence[Record]:
        return self._records
