"""What is stored about spaces and segments, read through the stream leader:
a stream's state, a segment's first and last retained messages, and the
``<prefix>_catalog`` KV bucket, which keeps what removals must not lose.

Catalog keys: ``sp.<space>`` holds a space's config, its delete mark (the
last position when it was deleted: it is deleted while nothing was written
since) and its last timestamp; ``sg.<space>.<segment>`` a segment's last
sequence, position, timestamp and cumulative bytes, written before its
records are purged, and its delete mark (names hex-encoded, see names.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from streams.model import RetentionPolicy, SegmentInfo, SpaceConfig, Target
from streams.storage import port
from streams.storage.jetstream import records
from streams.storage.jetstream.api import BATCH_COMMIT, BATCH_ID, JetStream
from streams.storage.jetstream.kv import Bucket, Conflict
from streams.storage.jetstream.names import Names, decode, encode


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentView:
    """A segment as stored: its first and last retained messages and the
    catalog's numbers (kept when its records are removed)."""

    name: str
    first: records.Stored | None
    last: records.Stored | None
    entry: dict[str, Any] | None

    @property
    def last_sequence(self) -> int:
        if self.last is not None:
            return self.last.sequence
        return 0 if self.entry is None else int(self.entry["last"])

    @property
    def cum(self) -> int:
        if self.last is not None:
            return self.last.cum
        return 0 if self.entry is None else int(self.entry["cum"])

    @property
    def deleted(self) -> bool:
        return (
            self.entry is not None
            and bool(self.entry.get("deleted"))
            and (self.last is None or self.last.sequence <= int(self.entry["last"]))
        )

    @property
    def first_sequence(self) -> int:
        return self.first.sequence if self.first is not None else self.last_sequence + 1

    def info(self) -> SegmentInfo:
        if self.first is not None and self.last is not None:
            return SegmentInfo(
                self.name,
                self.last.sequence,
                self.last.position,
                self.last.timestamp_ns,
                self.first.sequence,
                self.last.sequence - self.first.sequence + 1,
                self.last.cum - self.first.base,
                self.deleted,
            )
        entry = self.entry or {"last": 0, "pos": 0, "ts": 0}
        last = int(entry["last"])
        return SegmentInfo(
            self.name, last, int(entry["pos"]), int(entry["ts"]), last + 1, 0, 0, self.deleted
        )

    def numbers(self) -> dict[str, Any]:
        """The catalog entry that keeps its numbers once its records are gone."""
        if self.last is not None:
            return {
                "last": self.last.sequence,
                "pos": self.last.position,
                "ts": self.last.timestamp_ns,
                "cum": self.last.cum,
                "deleted": False,
            }
        return dict(self.entry or {"last": 0, "pos": 0, "ts": 0, "cum": 0}, deleted=False)


def config_json(config: SpaceConfig) -> dict[str, Any] | None:
    if config.retention is None:
        return {"retention": None}
    return {"retention": dataclasses.asdict(config.retention)}


def config_of(found: dict[str, Any] | None) -> SpaceConfig | None:
    if found is None:
        return None
    retention = found.get("retention")
    return SpaceConfig(None if retention is None else RetentionPolicy(**retention))


class Catalog:
    """The stored state of spaces and segments (every read through a leader)."""

    def __init__(self, js: JetStream, names: Names, bucket: Bucket) -> None:
        self._js = js
        self._names = names
        self.bucket = bucket

    def space_key(self, space: str) -> str:
        return f"sp.{encode(space)}"

    def segment_key(self, space: str, segment: str) -> str:
        return f"sg.{encode(space)}.{encode(segment)}"

    async def space_entry(self, space: str) -> tuple[dict[str, Any], int] | None:
        return await self.bucket.get(self.space_key(space))

    async def stream_state(self, space: str) -> tuple[int, int, int]:
        """(first sequence, last sequence, messages) of the space's stream
        (through the leader), the last always a transaction's last message.

        The leader stores a batch message by message: gets wait until the
        whole batch is stored, the stream's info does not, so its last
        sequence may be in the middle of a batch. A get of that message says
        whether it ends its batch (the commit keeps its header); when it does
        not, the stream's last message, got once the batch is whole, is a
        transaction's end (later batches are whole too)."""
        stream = self._names.stream(space)
        info = await self._js.info(stream)
        if info is None:
            return 1, 0, 0
        state = info["state"]
        last = int(state["last_seq"])
        messages = int(state["messages"])
        if not messages:
            return last + 1, last, messages
        at_last = await self._js.get(stream, seq=last)
        if at_last is None or (BATCH_ID in at_last.headers and BATCH_COMMIT not in at_last.headers):
            latest = await self._js.get(stream, last_by_subj=self._names.space_subjects(space))
            if latest is not None and latest.seq > last:
                # The rest of the batch (and any written since) follows ``last``.
                messages += latest.seq - last
                last = latest.seq
        return int(state["first_seq"]), last, messages

    async def last_timestamp(self, space: str, last: int) -> int:
        if last == 0:
            return 0
        found = await self._js.get(self._names.stream(space), seq=last)
        if found is not None:
            return int(found.headers[records.TS])
        entry = await self.space_entry(space)
        return 0 if entry is None else int(entry[0].get("ts", 0))

    async def segment(self, space: str, name: str) -> SegmentView:
        stream, subject = self._names.stream(space), self._names.subject(space, name)
        last_msg, first_msg, entry = await asyncio.gather(
            self._js.get(stream, last_by_subj=subject),
            self._js.get(stream, seq=1, next_by_subj=subject),
            self.bucket.get(self.segment_key(space, name)),
        )
        return SegmentView(
            name,
            None if first_msg is None else records.numbers(self._names, first_msg),
            None if last_msg is None else records.numbers(self._names, last_msg),
            None if entry is None else entry[0],
        )

    async def space_found(self, space: str) -> tuple[int, int, int]:
        """(first, last, messages) of a space that exists (records or a config), else NotFound."""
        entry = await self.space_entry(space)
        first, last, messages = await self.stream_state(space)
        if entry is None and last == 0:
            raise port.not_found(Target(space))
        if entry is not None and self.space_deleted(entry[0], last):
            raise port.not_found(Target(space))
        if entry is not None and last == 0 and entry[0].get("config") is None:
            raise port.not_found(Target(space))
        return first, last, messages

    @staticmethod
    def space_deleted(entry: dict[str, Any], last: int) -> bool:
        return entry.get("deleted_at") is not None and entry["deleted_at"] == last

    async def keep_numbers(
        self, space: str, segments: Sequence[SegmentView], last: int, deleted: bool = False
    ) -> None:
        """Writes down what a removal must not lose (before any record goes):
        each segment's last numbers, merged with what is stored (numbers only
        grow: another gateway may have stored newer ones meanwhile), marked
        ``deleted`` or not; and the space's last timestamp."""
        for segment in segments:
            key = self.segment_key(space, segment.name)
            while True:
                found = await self.bucket.get(key)
                numbers = segment.numbers()
                if found is not None and int(found[0]["last"]) > numbers["last"]:
                    numbers = found[0]
                try:
                    await self.bucket.put(
                        key, {**numbers, "deleted": deleted}, 0 if found is None else found[1]
                    )
                    break
                except Conflict:
                    continue
        ts = await self.last_timestamp(space, last)
        await self.update_space(space, lambda entry: {**entry, "ts": max(ts, entry.get("ts", 0))})

    async def update_space(
        self, space: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        key = self.space_key(space)
        while True:
            found = await self.bucket.get(key)
            current = {"config": None, "deleted_at": None, "ts": 0} if found is None else found[0]
            try:
                await self.bucket.put(key, change(current), 0 if found is None else found[1])
                return
            except Conflict:
                continue

    async def retained_segments(self, space: str) -> list[SegmentView]:
        info = await self._js.info(self._names.stream(space), self._names.space_subjects(space))
        subjects = [] if info is None else sorted(info["state"]["subjects"])
        return list(
            await asyncio.gather(
                *(self.segment(space, self._names.segment_of(s)) for s in subjects)
            )
        )

    async def space_names(self) -> list[str]:
        return [decode(key.split(".", 1)[1]) for key in await self.bucket.keys("sp.*")]

    async def segment_names(self, space: str) -> list[str]:
        info = await self._js.info(self._names.stream(space), self._names.space_subjects(space))
        names = {
            self._names.segment_of(s) for s in ([] if info is None else info["state"]["subjects"])
        }
        prefix = f"sg.{encode(space)}."
        names.update(decode(key[len(prefix) :]) for key in await self.bucket.keys(f"{prefix}*"))
        return sorted(names, key=lambda name: name.encode("utf-8"))

    async def deleted(self, target: Target) -> bool:
        """Whether a delete removed ``target`` and nothing was written to it since."""
        entry = await self.space_entry(target.space)
        if entry is not None and entry[0].get("deleted_at") is not None:
            _, last, _ = await self.stream_state(target.space)
            if last == entry[0]["deleted_at"]:
                return True
        if target.is_space:
            return False
        return (await self.segment(target.space, target.segment)).deleted

    # -- removals --------------------------------------------------------
