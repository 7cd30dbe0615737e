"""What ``streams produce`` reads: lines of a file (or stdin) turned into records,
cut into batches of one transaction each.

``--input payload``: each line is one payload. ``--input json``: each line is a
record as ``streams consume --output json`` prints it (``payload``, with
``payload_encoding`` utf-8 or base64, ``metadata``, and ``segment`` when the
command names none); its other fields are read by the server anew.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

from streams.client import NewRecord

INPUTS = ("payload", "json")


class InputError(Exception):
    """A line of the input that is not a record; the message names the line."""


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based, as editors and `sed -n Np` count
    text: bytes  # without its line ending
    end: int  # bytes of the input read up to the end of this line


@dataclass(frozen=True, slots=True)
class InputRecord:
    line: Line
    segment: str
    record: NewRecord


def lines(stream: IO[bytes]) -> Iterator[Line]:
    done = 0
    for number, raw in enumerate(stream, start=1):
        done += len(raw)
        yield Line(number, raw.rstrip(b"\n").removesuffix(b"\r"), done)


def records(
    source: Iterable[Line],
    *,
    name: str,
    kind: str,
    segment: str | None,
    metadata: Mapping[str, str],
) -> Iterator[InputRecord]:
    """The records of ``source``; ``segment`` None takes each record's own (json)."""
    for line in source:
        if kind == "payload":
            if segment is None:
                raise ValueError("payload input needs a segment")
            yield InputRecord(line, segment, NewRecord(line.text, dict(metadata)))
            continue
        try:
            own_segment, record = _json_record(line.text, metadata)
        except InputError as exc:
            raise InputError(f"{name}:{line.number}: {exc}") from None
        target = segment if segment is not None else own_segment
        if target is None:
            raise InputError(
                f"{name}:{line.number}: no 'segment' in the record, and none on the command line"
            )
        yield InputRecord(line, target, record)


def _json_record(text: bytes, extra: Mapping[str, str]) -> tuple[str | None, NewRecord]:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object (a record), got {type(obj).__name__}")
    payload = obj.get("payload")
    if not isinstance(payload, str):
        raise InputError("'payload': expected a string")
    encoding = obj.get("payload_encoding", "utf-8")
    if encoding == "utf-8":
        data = payload.encode("utf-8", "surrogatepass")
    elif encoding == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise InputError(f"'payload': not base64: {exc}") from None
    else:
        raise InputError(f"'payload_encoding': {encoding!r}, expected 'utf-8' or 'base64'")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InputError("'metadata': expected an object of strings")
    segment = obj.get("segment")
    if segment is not None and not isinstance(segment, str):
        raise InputError("'segment': expected a string")
    return segment, NewRecord(data, {**metadata, **extra})


@dataclass
class Batch:
    """Records for one Produce: a write per segment, in the order segments first
    appear, so the records keep their input order in the space."""

    writes: dict[str, list[InputRecord]] = field(default_factory=dict)
    count: int = 0
    size: int = 0
    last_segment: str | None = None
    end: int = 0

    def fits(self, item: InputRecord, max_records: int, max_bytes: int) -> bool:
        if not self.count:
            return True
        if self.count >= max_records or self.size + _size(item) > max_bytes:
            return False
        # A segment written earlier in this batch, after another: its write would
        # put this record before the other's, out of input order.
        return item.segment == self.last_segment or item.segment not in self.writes

    def add(self, item: InputRecord) -> None:
        self.writes.setdefault(item.segment, []).append(item)
        self.count += 1
        self.size += _size(item)
        self.last_segment = item.segment
        self.end = item.line.end

    def line_of(self, write: int, record: int) -> Line | None:
        """The input line of ``writes[write].records[record]`` (a server message's index)."""
        items = list(self.writes.values())
        if write < len(items) and record < len(items[write]):
            return items[write][record].line
        return None

    def lines(self) -> tuple[int, int]:
        numbers = [i.line.number for items in self.writes.values() for i in items]
        return min(numbers), max(numbers)


def _size(item: InputRecord) -> int:
    payload = item.record.payload
    length = len(payload) if isinstance(payload, bytes) else len(payload.encode())
    return length + sum(len(k) + len(v) for k, v in item.record.metadata.items()) + 16


def batches(items: Iterable[InputRecord], max_records: int, max_bytes: int) -> Iterator[Batch]:
    batch = Batch()
    for item in items:
        if not batch.fits(item, max_records, max_bytes):
            yield batch
            batch = Batch()
        batch.add(item)
    if batch.count:
        yield batch
