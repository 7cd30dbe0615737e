"""How a record is stored in a JetStream message: its body is the message
data, its numbers and transaction are headers (``Streams-*``), its position
is the message's stream sequence and its segment is in the subject.

``Streams-Cum`` is the sum of the body sizes of the segment's records up to
and including this one, so that a segment's retained bytes are known from its
first and last messages (rule 11's infos) without reading what is between.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from streams.model import Record
from streams.storage.jetstream.api import Message
from streams.storage.jetstream.names import Names

SEQ = "Streams-Seq"
CUM = "Streams-Cum"
TS = "Streams-Ts"
TXN = "Streams-Txn"


def headers(sequence: int, cum: int, timestamp_ns: int, transaction_id: str) -> dict[str, str]:
    found = {SEQ: str(sequence), CUM: str(cum), TS: str(timestamp_ns)}
    if transaction_id:
        found[TXN] = quote(transaction_id, safe="")
    return found


@dataclass(frozen=True, slots=True)
class Stored:
    """A message's numbers, without its body."""

    segment: str
    sequence: int
    position: int
    timestamp_ns: int
    cum: int
    size: int

    @property
    def base(self) -> int:
        """The segment's body bytes before this record."""
        return self.cum - self.size


def numbers(names: Names, message: Message) -> Stored:
    h = message.headers
    return Stored(
        names.segment_of(message.subject),
        int(h[SEQ]),
        message.seq,
        int(h[TS]),
        int(h[CUM]),
        len(message.data),
    )


def record(names: Names, space: str, message: Message) -> Record:
    h = message.headers
    return Record(
        space,
        names.segment_of(message.subject),
        int(h[SEQ]),
        message.seq,
        int(h[TS]),
        unquote(h.get(TXN, "")),
        message.data,
    )
