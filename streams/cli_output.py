"""How the ``streams`` command line prints: JSON lines, bare payloads, or a table.

``json`` is what ``streams produce --input json`` reads back, so records
round-trip; ``payload`` writes each record's payload bytes as they are, one per
line; ``table`` is for people: aligned columns, one row per item as it comes.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from streams.client import Message, Record

OUTPUTS = ("json", "payload", "table")
RECORD_COLUMNS = ("position", "segment", "sequence", "timestamp", "payload", "metadata")
MESSAGE_COLUMNS = ("position", "segment", "sequence", "attempt", "timestamp", "payload",
                   "metadata")  # fmt: skip


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def record_json(record: Record) -> dict[str, Any]:
    """A record as printed: the payload as text when it is UTF-8, else base64, and which."""
    try:
        payload, encoding = record.payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(record.payload).decode("ascii"), "base64"
    return {
        "space": record.space,
        "segment": record.segment,
        "sequence": record.sequence,
        "position": record.position,
        "timestamp": iso(record.timestamp),
        "payload": payload,
        "payload_encoding": encoding,
        "metadata": dict(record.metadata),
        "transaction_id": record.transaction_id,
    }


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on standard output, flushed (a reader may be waiting for it)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    text = str(value)
    # One row per item: a payload with a newline or a tab must not break the table.
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in "\n\r\t") else text


class Table:
    """Rows printed as they come (a follow never ends), in columns at least as
    wide as their headers."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._columns = tuple(columns)
        self._widths = [max(len(c), 8) for c in self._columns]
        self._write([c.upper() for c in self._columns])

    def _write(self, cells: Sequence[str]) -> None:
        *head, tail = cells
        padded = [c.ljust(w) for c, w in zip(head, self._widths, strict=False)]
        sys.stdout.write("  ".join([*padded, tail]).rstrip() + "\n")
        sys.stdout.flush()

    def row(self, obj: dict[str, Any]) -> None:
        """One row; a column the item lacks stays empty."""
        self._write([_cell(obj.get(c, "")) for c in self._columns])


def printer(output: str, columns: Sequence[str]) -> Callable[[dict[str, Any]], None]:
    """Prints dicts (one per item) as JSON lines or as a table of ``columns``."""
    if output == "table":
        return Table(columns).row
    return emit


def _payload(record: Record) -> None:
    sys.stdout.buffer.write(record.payload + b"\n")
    sys.stdout.buffer.flush()


def record_printer(output: str) -> Callable[[Record], None]:
    if output == "payload":
        return _payload
    show = printer(output, RECORD_COLUMNS)
    return lambda record: show(record_json(record))


def message_printer(output: str) -> Callable[[Message], None]:
    """A group's message as a record (``streams produce --input json`` reads it
    back), plus its ``attempt``."""
    if output == "payload":
        return _payload
    show = printer(output, MESSAGE_COLUMNS)
    return lambda message: show({**record_json(message), "attempt": message.attempt})
