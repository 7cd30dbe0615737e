"""Reads of records: ranges by batched direct gets (any replica) checked
against the stream leader, single messages through the leader, and the
bisections that find a segment's sequence or a timestamp among stream
sequences (a segment's sequence is a header, not the stream's)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streams import codec
from streams.model import Cut, Record, Target
from streams.storage.batches import RecordList
from streams.storage.jetstream import records
from streams.storage.jetstream.api import JetStream, Message
from streams.storage.jetstream.catalog import Catalog, SegmentView
from streams.storage.jetstream.names import Names

# Messages asked for per batched direct get, at most: a read asks for what its
# Cut may still return and one more (where the next read starts), so that one
# Consume response is one request (the service's max_batch is 10,000).
READ_BATCH = 10_001
# Bytes asked for per batched direct get, at most.
READ_BYTES = 4 << 20


class Reader:
    """Records of spaces and segments as the port reads them."""

    def __init__(self, js: JetStream, names: Names, catalog: Catalog) -> None:
        self._js = js
        self._names = names
        self._catalog = catalog

    async def locate(
        self, space: str, segment: SegmentView, sequence: int
    ) -> records.Stored | None:
        """The retained message of ``segment`` with ``sequence``, None past its
        last: a search over stream sequences through the leader, each guess
        interpolated between the messages known below and at or above it (a
        segment's messages are often evenly spread: one get), every other one
        a bisection (so that an uneven spread costs at most twice as many)."""
        if segment.first is None or segment.last is None or sequence > segment.last.sequence:
            return None
        if sequence <= segment.first.sequence:
            return segment.first
        stream, subject = self._names.stream(space), self._names.subject(space, segment.name)
        # The answer is at a stream sequence in low..high or is ``found``;
        # ``below`` is the sequence of the segment's message just before low.
        low, high = segment.first.position + 1, segment.last.position
        below, found = segment.first.sequence, segment.last
        interpolate = True
        while low <= high:
            if interpolate:
                spread = (found.position - low) / max(1, found.sequence - below - 1)
                guess = min(high, low + int((sequence - below - 1) * spread))
            else:
                guess = (low + high) // 2
            interpolate = not interpolate
            message = await self._js.get(stream, seq=guess, next_by_subj=subject)
            if message is None:
                break
            stored = records.numbers(self._names, message)
            if stored.sequence == sequence:
                return stored
            if stored.sequence > sequence:
                found, high = stored, guess - 1
            else:
                below, low = stored.sequence, stored.position + 1
        return found

    async def range(
        self, space: str, subject: str, start: int, end: int, count: int = READ_BATCH
    ) -> list[Message]:
        """Up to ``count`` messages of ``subject`` at stream sequences
        ``start..end``, a batch from any replica; when it has none, the leader
        says whether one is due (a replica that lags), so that a read never
        ends early."""
        if start > end:
            return []
        stream = self._names.stream(space)
        count = max(1, min(count, end - start + 1, READ_BATCH))
        found = await self._js.direct_batch(stream, start, count, READ_BYTES, subject)
        found = [m for m in found if m.seq <= end]
        if not found:
            message = await self._js.get(stream, seq=start, next_by_subj=subject)
            if message is not None and message.seq <= end:
                found = [message]
        return found

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[RecordList, int]:
        first = max(first, 1)
        space = target.space
        if target.is_space:
            start, last_offset, _ = await self._catalog.stream_state(space)
            subject = self._names.space_subjects(space)
            floor = start
            start, end = max(start, first), min(last, last_offset)
        else:
            segment = await self._catalog.segment(space, target.segment)
            last_offset = segment.last_sequence
            subject = self._names.subject(space, target.segment)
            located = await self.locate(space, segment, first)
            floor = 0 if segment.first is None else segment.first.position
            start = located.position if located is not None else 1
            end = 0 if located is None or segment.last is None else segment.last.position
        after = max(first, min(last, last_offset) + 1, 1)
        found: list[Record] = []
        stored: list[bytes] = []
        size = skipped = 0
        floors: dict[str, int] = {}
        position = start
        while position <= end:
            # Filtered by segment, skipped records do not count against the Cut.
            wanted = READ_BATCH if segment_prefix else cut.max_records - len(found) + 1
            batch = await self.range(space, subject, position, end, wanted)
            if not batch:
                break
            if target.is_space:
                await self.floors(space, batch, floors)
            for message in batch:
                position = message.seq + 1
                if message.seq < floor:
                    continue
                record = records.record(self._names, space, message)
                if target.is_space and record.sequence < floors[record.segment]:
                    continue  # removed: a lagging replica still has it
                offset = record.position if target.is_space else record.sequence
                if offset < first:
                    continue
                if offset > last:
                    return RecordList(found, stored), after
                if len(found) == cut.max_records:
                    return RecordList(found, stored), offset
                raw = codec.stored(record)
                if segment_prefix and not record.segment.encode("utf-8").startswith(segment_prefix):
                    if skipped >= cut.max_skip_bytes:
                        return RecordList(found, stored), offset
                    skipped += len(raw)
                    continue
                size += codec.framed_size(raw)
                if found and size > cut.max_bytes:
                    return RecordList(found, stored), offset
                found.append(record)
                stored.append(raw)
        return RecordList(found, stored), after

    async def floors(self, space: str, batch: Sequence[Message], floors: dict[str, int]) -> None:
        """The first retained sequence of each segment in ``batch`` (leader)."""
        stream = self._names.stream(space)
        missing = sorted(
            {m.subject for m in batch if self._names.segment_of(m.subject) not in floors}
        )
        firsts = await asyncio.gather(
            *(self._js.get(stream, seq=1, next_by_subj=subject) for subject in missing)
        )
        for subject, message in zip(missing, firsts, strict=True):
            name = self._names.segment_of(subject)
            floors[name] = 2**64 if message is None else int(message.headers[records.SEQ])

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        space = target.space
        stream = self._names.stream(space)
        if target.is_space:
            low, high, messages = await self._catalog.stream_state(space)
            subject, past = self._names.space_subjects(space), high + 1
            if not messages:
                return past
        else:
            segment = await self._catalog.segment(space, target.segment)
            past = segment.last_sequence + 1
            if segment.first is None or segment.last is None:
                return past
            subject = self._names.subject(space, target.segment)
            low, high = segment.first.position, segment.last.position
        answer: records.Stored | None = None
        while low <= high:
            message = await self._js.get(stream, seq=(low + high) // 2, next_by_subj=subject)
            if message is None:
                break
            stored = records.numbers(self._names, message)
            if stored.timestamp_ns >= timestamp_ns:
                answer, high = stored, (low + high) // 2 - 1
            else:
                low = stored.position + 1
        if answer is None:
            return past
        return answer.position if target.is_space else answer.sequence

    async def peek(self, target: Target) -> RecordList | None:
        stream = self._names.stream(target.space)
        subject = (
            self._names.space_subjects(target.space)
            if target.is_space
            else self._names.subject(target.space, target.segment)
        )
        message = await self._js.get(stream, last_by_subj=subject)
        if message is None:
            return None
        return RecordList([records.record(self._names, target.space, message)])
