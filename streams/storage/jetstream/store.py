"""The JetStream :class:`~streams.storage.port.Store`: stateless, so that
several gateways (Streams servers) share one NATS cluster.

Model (issue 14; measured facts in the notes on JetStream):

- A space is a stream (``<prefix>_s_<hash>``); a record's position is its
  stream sequence, dense because a transaction is one atomic batch and the
  stream is never deleted (a space delete purges it: sequences go on).
- A segment is a subject (``<prefix>.<space>.<hex name>``); its sequence, the
  transaction's timestamp and id are headers (see records.py).
- A gateway numbers a transaction from the space's last stream sequence and
  each segment's last message, and publishes it with
  ``Nats-Expected-Last-Sequence``: if any gateway wrote in between, the batch
  is refused whole and renumbered (optimistic concurrency, rule 3). Within a
  gateway, writes to a space take turns, so only other gateways conflict; the
  numbers are cached while the stream's last sequence is the one they were
  read at.
- Reads of single messages (last, first, bisection) go through the stream
  leader (never stale); ranges are read with batched direct gets (any replica)
  and checked against the leader (a lagging replica may miss new records or
  still hold removed ones).
- KV buckets: ``<prefix>_catalog`` (each space's config, delete mark and last
  timestamp; the numbers of segments whose records were removed, so that they
  are never reused), ``<prefix>_offsets`` (revision compare-and-set),
  ``<prefix>_dedupe`` (transaction results: a retried batch with the same
  ``Nats-Msg-Id`` is refused by JetStream, the answer comes from here).
- Consumer groups are not kept (port rule 15 lets a backend refuse them): a
  group's dispatcher lives in one process, and several gateways serve at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from nats.aio.client import Client

from streams.errors import InvalidArgument, InvariantViolation, Unavailable, Unimplemented
from streams.model import (
    Cut,
    GroupConfig,
    GroupState,
    ProduceResult,
    Removed,
    RetentionPolicy,
    SegmentAck,
    SegmentInfo,
    SpaceConfig,
    SpaceInfo,
    Target,
    Transaction,
)
from streams.storage import port
from streams.storage.backend import Setup
from streams.storage.batches import RecordList
from streams.storage.jetstream import MAX_RECORDS_PER_PRODUCE, connection, dedupe, records, urls
from streams.storage.jetstream.api import (
    BATCH_DUPLICATE_ID,
    DUPLICATE_IN_PROCESS,
    WRONG_LAST_SEQUENCE,
    ApiError,
    JetStream,
)
from streams.storage.jetstream.catalog import Catalog, SegmentView, config_json, config_of
from streams.storage.jetstream.feed import Feeds
from streams.storage.jetstream.kv import Bucket, Conflict
from streams.storage.jetstream.names import Names, decode, encode
from streams.storage.jetstream.reads import Reader
from streams.storage.port import BackgroundTask, DiskUsage
from streams.storage.tail import Subscription, Tail
from streams.storage.watches import Watch

# How long a Produce keeps renumbering while other gateways write to its space.
CONFLICT_SECONDS = 10.0
# The longest random pause between two attempts (the pause doubles from 2 ms).
MAX_BACKOFF_SECONDS = 0.05
# Records another gateway wrote that are read to catch up (more: numbers read afresh).
MAX_CATCH_UP = 256
# How long a retried transaction waits for the original's result to be recorded.
DEDUPE_WAIT_SECONDS = 1.0
# JetStream's own duplicate window, in which a retried batch is refused.
DUPLICATE_WINDOW_NS = 120 * 1_000_000_000
# Dedupe entries outlive their window by this much (real time) before the bucket drops them.
DEDUPE_MARGIN_NS = 3600 * 1_000_000_000
# Pause before retrying a batch whose id another gateway's batch is using right now.
IN_PROCESS_PAUSE = 0.01


@dataclasses.dataclass(slots=True)
class _Numbers:
    """A gateway's view of a space's numbers, valid while the stream's last
    sequence is ``last``: each segment's last sequence and cumulative bytes."""

    last: int
    last_ts: int
    segments: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


class JetStreamStore:
    """The JetStream backend. Example::

    store = await open_store(setup)  # --nats-url nats://127.0.0.1:4222
    result = await store.produce(txn)
    """

    def __init__(
        self,
        nc: Client,
        names: Names,
        replicas: int,
        dedupe_window_ns: int,
        clock: Callable[[], int],
        tail: Tail,
    ) -> None:
        self._nc = nc
        self._js = JetStream(nc)
        self._names = names
        self._replicas = replicas
        self._dedupe_window_ns = dedupe_window_ns
        self._clock = clock
        self._tail = tail
        self._feeds = Feeds(nc, nc.jetstream(), names, tail)
        self._catalog = Catalog(self._js, names, Bucket(self._js, names.bucket("catalog")))
        self._reader = Reader(self._js, names, self._catalog)
        self._offsets = Bucket(self._js, names.bucket("offsets"))
        self._dedupe = Bucket(self._js, names.bucket("dedupe"))
        self._numbers: dict[str, _Numbers] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._streams: set[str] = set()
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._closed = False

    async def start(self) -> None:
        await self._catalog.bucket.create(self._replicas)
        await self._offsets.create(self._replicas)
        await self._dedupe.create(self._replicas, self._dedupe_window_ns + DEDUPE_MARGIN_NS)

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed: the server is shutting down")

    # -- spaces and their numbers -------------------------------------------

    async def _ensure_stream(self, space: str) -> str:
        stream = self._names.stream(space)
        if stream not in self._streams:
            await self._js.create_stream(
                {
                    "name": stream,
                    "description": f"Streams space {space!r}",
                    "subjects": [self._names.space_subjects(space)],
                    "storage": "file",
                    "num_replicas": self._replicas,
                    "allow_atomic": True,
                    "allow_direct": True,
                    "duplicate_window": DUPLICATE_WINDOW_NS,
                    "metadata": {"streams.space": space.encode("utf-8").hex()},
                }
            )
            with contextlib.suppress(Conflict):
                await self._catalog.bucket.put(
                    self._catalog.space_key(space), {"config": None, "deleted_at": None, "ts": 0}, 0
                )
            self._streams.add(stream)
        return stream

    async def _load(self, space: str) -> _Numbers:
        _, last, _ = await self._catalog.stream_state(space)
        numbers = _Numbers(last, await self._catalog.last_timestamp(space, last))
        self._numbers[space] = numbers
        return numbers

    async def _segment_numbers(self, space: str, numbers: _Numbers, name: str) -> tuple[int, int]:
        found = numbers.segments.get(name)
        if found is None:
            stream, subject = self._names.stream(space), self._names.subject(space, name)
            last_msg = await self._js.get(stream, last_by_subj=subject)
            if last_msg is not None:
                stored = records.numbers(self._names, last_msg)
                found = (stored.sequence, stored.cum)
            else:
                entry = await self._catalog.bucket.get(self._catalog.segment_key(space, name))
                found = (0, 0) if entry is None else (int(entry[0]["last"]), int(entry[0]["cum"]))
            numbers.segments[name] = found
        return found

    # -- writes ----------------------------------------------------------

    def _lock(self, space: str) -> asyncio.Lock:
        lock = self._locks.get(space)
        if lock is None:
            lock = self._locks[space] = asyncio.Lock()
        return lock

    async def produce(self, txn: Transaction) -> ProduceResult:
        self._check_open()
        if txn.record_count > MAX_RECORDS_PER_PRODUCE:
            raise InvalidArgument(
                f"writes: {txn.record_count} records, over the JetStream backend's "
                f"max_records_per_produce ({MAX_RECORDS_PER_PRODUCE}, one atomic batch)"
            )
        async with self._lock(txn.space):
            dedupe_key = f"{encode(txn.space)}.{encode(txn.transaction_id)}"
            revision = 0
            if txn.transaction_id:
                found = await self._dedupe.get(dedupe_key)
                if found is not None:
                    answer = self._answer(txn, found[0])
                    if answer is not None:
                        return answer
                    revision = found[1]
            stream = await self._ensure_stream(txn.space)
            result = await self._commit(txn, stream, dedupe_key, revision)
            if result.duplicate:
                return result
        await self._feeds.reached(txn.space, result.last_position)
        return result

    def _answer(self, txn: Transaction, entry: dict[str, Any]) -> ProduceResult | None:
        """The original result for a repeat within the window (None: expired)."""
        if int(entry["expires"]) <= self._clock():
            return None
        if entry["fingerprint"] != txn.fingerprint.hex():
            raise port.already_exists(txn)
        return dedupe.result(entry)

    async def _commit(
        self, txn: Transaction, stream: str, dedupe_key: str, revision: int
    ) -> ProduceResult:
        fresh = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFLICT_SECONDS
        conflicts = 0
        while loop.time() < deadline:
            numbers = self._numbers.get(txn.space)
            if numbers is None:
                numbers, fresh = await self._load(txn.space), True
            lasts = [
                await self._segment_numbers(txn.space, numbers, a.segment) for a in txn.appends
            ]
            mismatch = next(
                (
                    (append, last)
                    for append, (last, _) in zip(txn.appends, lasts, strict=True)
                    if append.expected_sequence is not None and append.expected_sequence != last
                ),
                None,
            )
            if mismatch is not None:
                if not fresh:
                    # What this gateway knew may be old: look again before refusing.
                    self._numbers.pop(txn.space, None)
                    continue
                raise port.sequence_mismatch(
                    mismatch[0].segment, mismatch[1], mismatch[0].expected_sequence or 0
                )
            ts = max(self._clock(), numbers.last_ts)
            messages: list[tuple[str, bytes]] = []
            headers: list[dict[str, str]] = []
            acks, updated = [], {}
            for append in txn.appends:
                sequence, cum = updated.get(append.segment) or numbers.segments[append.segment]
                subject = self._names.subject(txn.space, append.segment)
                first = sequence + 1
                for body in append.bodies:
                    sequence += 1
                    cum += len(body)
                    messages.append((subject, body))
                    headers.append(records.headers(sequence, cum, ts, txn.transaction_id))
                updated[append.segment] = (sequence, cum)
                acks.append(SegmentAck(append.segment, first, sequence))
            headers[0]["Nats-Expected-Last-Sequence"] = str(numbers.last)
            if txn.transaction_id:
                headers[0][dedupe.MSG_ID] = f"{dedupe_key}.{revision}"
                headers[0][dedupe.FINGERPRINT] = txn.fingerprint.hex()
            try:
                last = await self._js.publish_batch(messages, headers)
            except ApiError as error:
                self._numbers.pop(txn.space, None)
                if error.err_code == WRONG_LAST_SEQUENCE:
                    # Another gateway wrote: learn its records, then pause at
                    # random so that gateways that keep colliding take turns.
                    fresh, conflicts = False, conflicts + 1
                    await self._catch_up(txn.space, numbers, error.description)
                    pause = min(0.002 * 2**conflicts, MAX_BACKOFF_SECONDS)
                    await asyncio.sleep(random.uniform(0, pause))
                    continue
                if error.err_code == DUPLICATE_IN_PROCESS:
                    # Another gateway's batch with this id is being stored: once
                    # it is, a retry is refused as a repeat (or, if it failed, goes in).
                    fresh = False
                    await asyncio.sleep(IN_PROCESS_PAUSE)
                    continue
                if error.err_code == BATCH_DUPLICATE_ID:
                    return await self._original(txn, dedupe_key, revision)
                raise Unavailable(
                    f"JetStream refused a write to space {txn.space!r}: {error}"
                ) from error
            except BaseException:
                self._numbers.pop(txn.space, None)  # an ack lost: the numbers are unknown
                raise
            if last != numbers.last + len(messages):
                raise InvariantViolation(
                    f"space {txn.space!r}: a batch of {len(messages)} after {numbers.last} "
                    f"ended at {last}"
                )
            numbers.last, numbers.last_ts = last, ts
            numbers.segments.update(updated)
            result = ProduceResult(tuple(acks), last - len(messages) + 1, last, ts)
            if txn.transaction_id:
                await self._record(txn.fingerprint, dedupe_key, revision, result)
            return result
        raise Unavailable(
            f"space {txn.space!r}: other writers kept changing it for {CONFLICT_SECONDS} s "
            f"({conflicts} attempts); retry"
        )

    async def _catch_up(self, space: str, numbers: _Numbers, refusal: str) -> None:
        """Brings ``numbers`` up to the stream's last sequence named in
        ``refusal`` ("wrong last sequence: N") by reading the records written
        since; leaves them to be read afresh unless every one of them is seen."""
        match = re.search(r"(\d+)$", refusal)
        if match is None:
            return
        actual = int(match.group(1))
        if not 0 < actual - numbers.last <= MAX_CATCH_UP:
            return
        found = await self._js.direct_batch(
            self._names.stream(space),
            numbers.last + 1,
            actual - numbers.last,
            64 << 20,
            self._names.space_subjects(space),
        )
        if [m.seq for m in found] != list(range(numbers.last + 1, actual + 1)):
            return  # a replica that lags, or removed records: read afresh
        for message in found:
            stored = records.numbers(self._names, message)
            numbers.segments[stored.segment] = (stored.sequence, stored.cum)
        numbers.last, numbers.last_ts = actual, records.numbers(self._names, found[-1]).timestamp_ns
        self._numbers[space] = numbers

    async def _record(
        self, fingerprint: bytes, key: str, revision: int, result: ProduceResult
    ) -> None:
        expires = result.timestamp_ns + self._dedupe_window_ns
        with contextlib.suppress(Conflict):
            await self._dedupe.put(key, dedupe.entry(fingerprint, expires, result), revision)

    async def _original(self, txn: Transaction, key: str, revision: int) -> ProduceResult:
        """A batch JetStream refused as a repeat: the original's result, once
        its gateway recorded it; if it does not (it stopped after the commit),
        as found in the stream, and recorded now."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEDUPE_WAIT_SECONDS
        while True:
            found = await self._dedupe.get(key)
            if found is not None and found[1] != revision:
                answer = self._answer(txn, found[0])
                if answer is not None:
                    return answer
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        window = DUPLICATE_WINDOW_NS / 1e9 + DEDUPE_WAIT_SECONDS + 10
        stored = await dedupe.recover(self._js, self._names, txn.space, f"{key}.{revision}", window)
        if stored is None:
            raise Unavailable(
                f"transaction_id: {txn.transaction_id!r}: JetStream refused it as a repeat in "
                f"space {txn.space!r}, but the original is not found; retry later"
            )
        fingerprint, original = stored
        await self._record(fingerprint, key, revision, original)
        if fingerprint != txn.fingerprint:
            raise port.already_exists(txn)
        return dataclasses.replace(original, duplicate=True)

    async def commit_offset(
        self, consumer: str, target: Target, offset: int, expected: int | None
    ) -> int:
        self._check_open()
        if await self._catalog.deleted(target):
            raise port.deleted(target)
        last = await self._last_offset(target)
        if offset > last:
            raise port.out_of_range(offset, last, target)
        key = self._offset_key(consumer, target)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        previous = self._in_flight.get(key)
        self._in_flight[key] = done
        try:
            if previous is not None:
                await asyncio.shield(previous)
            while True:
                found = await self._offsets.get(key)
                stored = None if found is None else int(found[0])
                if expected is not None and expected != (stored or 0):
                    raise port.offset_mismatch(expected, stored, consumer, target)
                try:
                    await self._offsets.put(key, offset, 0 if found is None else found[1])
                    return offset
                except Conflict:
                    continue  # another gateway committed meanwhile: compare again
        finally:
            done.set_result(None)
            if self._in_flight.get(key) is done:
                del self._in_flight[key]

    def _offset_key(self, consumer: str, target: Target) -> str:
        return f"{encode(target.space)}.{encode(target.segment)}.{encode(consumer)}"

    async def trim(self, target: Target, before: int) -> tuple[int, Removed]:
        self._check_open()
        first, last, _ = await self._catalog.space_found(target.space)
        if target.is_space:
            if before > last + 1:
                raise port.trim_out_of_range(before, last, target)
            if before <= first:
                return first, Removed()
            removed = await self._trim_space(target.space, before, last)
            return (await self._catalog.stream_state(target.space))[0], removed
        segment = await self._catalog.segment(target.space, target.segment)
        if (segment.entry is None and segment.last is None) or segment.deleted:
            raise port.not_found(target)
        if before > segment.last_sequence + 1:
            raise port.trim_out_of_range(before, segment.last_sequence, target)
        if segment.first is None or before <= segment.first.sequence:
            return segment.first_sequence, Removed()
        removed = await self._trim_segment(target.space, segment, before, last)
        return before, removed

    async def _trim_segment(
        self, space: str, segment: SegmentView, before: int, last: int
    ) -> Removed:
        if segment.first is None or segment.last is None:
            return Removed()
        kept = await self._reader.locate(space, segment, before)
        await self._catalog.keep_numbers(space, [segment], last)
        stream, subject = self._names.stream(space), self._names.subject(space, segment.name)
        if kept is None:
            removed = Removed(
                segment.last.sequence - segment.first.sequence + 1,
                segment.last.cum - segment.first.base,
            )
            # Bounded by what was seen: a record another gateway adds meanwhile stays.
            await self._js.purge(stream, subject, segment.last.position + 1)
        else:
            removed = Removed(
                kept.sequence - segment.first.sequence, kept.base - segment.first.base
            )
            await self._js.purge(stream, subject, kept.position)
        await self._feeds.removed(space, [segment.name])
        return removed

    async def _trim_space(self, space: str, before: int, last: int) -> Removed:
        stream = self._names.stream(space)
        segments = await self._catalog.retained_segments(space)
        cut: list[tuple[SegmentView, records.Stored | None]] = []
        removed = Removed()
        for segment in segments:
            if segment.first is None or segment.last is None or segment.first.position >= before:
                continue
            kept_msg = await self._js.get(
                stream, seq=before, next_by_subj=self._names.subject(space, segment.name)
            )
            kept = None if kept_msg is None else records.numbers(self._names, kept_msg)
            cut.append((segment, kept))
            if kept is None:
                removed += Removed(
                    segment.last.sequence - segment.first.sequence + 1,
                    segment.last.cum - segment.first.base,
                )
            else:
                removed += Removed(
                    kept.sequence - segment.first.sequence, kept.base - segment.first.base
                )
        await self._catalog.keep_numbers(space, [segment for segment, _ in cut], last)
        await self._js.purge(stream, None, before)
        if cut:
            await self._feeds.removed(space, sorted((s.name for s, _ in cut), key=encode))
        return removed

    async def delete_segment(self, space: str, segment: str, expected: int | None) -> Removed:
        self._check_open()
        found = await self._catalog.segment(space, segment)
        actual = found.last_sequence
        if expected is not None and expected != actual:
            raise port.sequence_mismatch(segment, actual, expected, "expected_sequence")
        _, last, _ = await self._catalog.stream_state(space)
        entry = await self._catalog.space_entry(space)
        if (found.entry is None and found.last is None) or found.deleted:
            return Removed()
        if entry is not None and self._catalog.space_deleted(entry[0], last):
            return Removed()
        removed = Removed()
        if found.first is not None and found.last is not None:
            removed = Removed(
                found.last.sequence - found.first.sequence + 1, found.last.cum - found.first.base
            )
        await self._catalog.keep_numbers(space, [found], last, deleted=True)
        if found.last is not None:
            # Bounded by what was seen: a record another gateway adds meanwhile
            # stays, and the segment is written again (its numbers go on).
            stream, subject = self._names.stream(space), self._names.subject(space, segment)
            await self._js.purge(stream, subject, found.last.position + 1)
        await self._offsets.delete(f"{encode(space)}.{encode(segment)}.*")
        self._numbers.pop(space, None)
        await self._feeds.removed(space, [segment])
        return removed

    async def delete_space(self, space: str) -> Removed:
        self._check_open()
        entry = await self._catalog.space_entry(space)
        _, last, _ = await self._catalog.stream_state(space)
        if entry is None and last == 0:
            return Removed()
        if entry is not None and self._catalog.space_deleted(entry[0], last):
            return Removed()
        names = await self._catalog.segment_names(space)
        segments = await asyncio.gather(*(self._catalog.segment(space, name) for name in names))
        removed = Removed()
        for segment in segments:
            if segment.first is not None and segment.last is not None:
                removed += Removed(
                    segment.last.sequence - segment.first.sequence + 1,
                    segment.last.cum - segment.first.base,
                )
        await self._catalog.keep_numbers(space, segments, last, deleted=True)
        await self._catalog.update_space(space, lambda e: {**e, "config": None, "deleted_at": last})
        if last:
            await self._js.purge(self._names.stream(space), None, last + 1)
        await self._offsets.delete(f"{encode(space)}.>")
        self._numbers.pop(space, None)
        await self._feeds.removed(space, None)
        return removed

    async def configure_space(self, space: str, config: SpaceConfig) -> None:
        self._check_open()
        await self._ensure_stream(space)
        await self._catalog.update_space(
            space, lambda e: {**e, "config": config_json(config), "deleted_at": None}
        )

    async def enforce_retention(self, defaults: RetentionPolicy) -> Removed:
        self._check_open()
        now = self._clock()
        removed = Removed()
        for space in await self._catalog.space_names():
            entry = await self._catalog.space_entry(space)
            config = None if entry is None else config_of(entry[0].get("config"))
            policy = defaults if config is None or config.retention is None else config.retention
            if not policy.limited:
                continue
            try:
                first, last, _ = await self._catalog.space_found(space)
            except port.NotFound:
                continue
            if policy.max_age_ns:
                cut = await self._reader.first_at_or_after(Target(space), now - policy.max_age_ns)
                if cut > first:
                    removed += await self._trim_space(space, cut, last)
            if policy.max_records_per_segment:
                for segment in await self._catalog.retained_segments(space):
                    if segment.first is None or segment.last is None:
                        continue
                    over = (
                        segment.last.sequence
                        - segment.first.sequence
                        + 1
                        - policy.max_records_per_segment
                    )
                    if over > 0:
                        removed += await self._trim_segment(
                            space, segment, segment.first.sequence + over, last
                        )
            if policy.max_bytes:
                removed += await self._trim_bytes(space, policy.max_bytes, last)
        return removed

    async def _trim_bytes(self, space: str, max_bytes: int, last: int) -> Removed:
        segments = await self._catalog.retained_segments(space)
        size = sum(s.last.cum - s.first.base for s in segments if s.first and s.last)
        if size <= max_bytes:
            return Removed()
        first, _, _ = await self._catalog.stream_state(space)
        position = first
        while size > max_bytes:
            batch = await self._reader.range(
                space, self._names.space_subjects(space), position, last
            )
            if not batch:
                break
            for message in batch:
                if size <= max_bytes:
                    break
                size -= len(message.data)
                position = message.seq + 1
            else:
                continue
            break
        return await self._trim_space(space, position, last)

    # -- reads -----------------------------------------------------------

    async def last_offset(self, target: Target) -> int:
        self._check_open()
        return await self._last_offset(target)

    async def _last_offset(self, target: Target) -> int:
        if target.is_space:
            return (await self._catalog.stream_state(target.space))[1]
        return (await self._catalog.segment(target.space, target.segment)).last_sequence

    async def first_offset(self, target: Target) -> int:
        self._check_open()
        if target.is_space:
            return (await self._catalog.stream_state(target.space))[0]
        return (await self._catalog.segment(target.space, target.segment)).first_sequence

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[RecordList, int]:
        self._check_open()
        return await self._reader.read(target, first, last, cut, segment_prefix)

    async def peek(self, target: Target) -> RecordList | None:
        self._check_open()
        return await self._reader.peek(target)

    @contextlib.asynccontextmanager
    async def follow(self, target: Target) -> AsyncIterator[Subscription]:
        self._check_open()
        await self._ensure_stream(target.space)
        _, last, _ = await self._catalog.stream_state(target.space)
        await self._feeds.hold(target.space, last)
        try:
            baseline = await self._last_offset(target)
            if self._feeds.known.get(target, 0) < baseline:
                self._feeds.known[target] = baseline
            with self._tail.subscribe(target, self._feeds.last) as subscription:
                yield subscription
        finally:
            await self._feeds.release(target.space)

    @contextlib.asynccontextmanager
    async def watch(self, space: str) -> AsyncIterator[Watch]:
        self._check_open()
        await self._ensure_stream(space)
        _, last, _ = await self._catalog.stream_state(space)
        await self._feeds.hold(space, last)
        try:
            async with self._tail.watch(space) as watch:
                yield watch
        finally:
            await self._feeds.release(space)

    async def end_subscriptions(self) -> None:
        self._tail.close()

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        self._check_open()
        return await self._reader.first_at_or_after(target, timestamp_ns)

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        self._check_open()
        key = self._offset_key(consumer, target)
        pending = self._in_flight.get(key)
        if pending is not None:
            await asyncio.shield(pending)
        found = await self._offsets.get(key)
        return None if found is None else int(found[0])

    async def consumer_lags(self, limit: int) -> tuple[list[tuple[str, Target, int]], bool]:
        self._check_open()
        keys = []
        for key in await self._offsets.keys():
            space, segment, consumer = (decode(token) for token in key.split("."))
            keys.append((consumer, space, segment, key))
        keys.sort(key=lambda k: tuple(part.encode("utf-8") for part in k[:3]))
        found = []
        for consumer, space, segment, key in keys[:limit]:
            target = Target(space, segment)
            stored = await self._offsets.get(key)
            if stored is None:
                continue
            behind = await self._last_offset(target) - int(stored[0])
            found.append((consumer, target, max(0, behind)))
        return found, len(keys) > limit

    # -- infos and lists -------------------------------------------------

    async def _space_info(self, space: str) -> SpaceInfo | None:
        entry = await self._catalog.space_entry(space)
        first, last, messages = await self._catalog.stream_state(space)
        config = None if entry is None else config_of(entry[0].get("config"))
        if entry is not None and self._catalog.space_deleted(entry[0], last):
            return None
        if last == 0 and config is None:
            return None
        size = 0
        if messages:
            size = sum(
                s.last.cum - s.first.base
                for s in await self._catalog.retained_segments(space)
                if s.first is not None and s.last is not None
            )
        return SpaceInfo(
            space,
            last,
            await self._catalog.last_timestamp(space, last),
            first,
            messages,
            size,
            config,
        )

    async def get_space(self, space: str) -> SpaceInfo | None:
        self._check_open()
        return await self._space_info(space)

    async def get_segment(
        self, space: str, segment: str, include_deleted: bool = False
    ) -> SegmentInfo | None:
        self._check_open()
        found = await self._catalog.segment(space, segment)
        if found.entry is None and found.last is None:
            return None
        space_entry = await self._catalog.space_entry(space)
        info = found.info()
        if space_entry is not None and self._catalog.space_deleted(
            space_entry[0], (await self._catalog.stream_state(space))[1]
        ):
            info = dataclasses.replace(info, deleted=True)
        if info.deleted and not include_deleted:
            return None
        return info

    async def list_spaces(
        self,
        after: str | None,
        limit: int,
        include: Callable[[str], bool] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[SpaceInfo]:
        self._check_open()
        found: list[SpaceInfo] = []
        for name in await self._catalog.space_names():
            if len(found) == limit:
                break
            if after is not None and name.encode("utf-8") <= after.encode("utf-8"):
                continue
            if prefixes is not None and not name.startswith(tuple(prefixes)):
                continue
            if include is not None and not include(name):
                continue
            info = await self._space_info(name)
            if info is not None:
                found.append(info)
        return found

    async def list_segments(
        self, space: str, after: str | None, limit: int, include_deleted: bool = False
    ) -> list[SegmentInfo]:
        self._check_open()
        found: list[SegmentInfo] = []
        for name in await self._catalog.segment_names(space):
            if len(found) == limit:
                break
            if after is not None and name.encode("utf-8") <= after.encode("utf-8"):
                continue
            info = await self.get_segment(space, name, include_deleted)
            if info is not None:
                found.append(info)
        return found

    # -- consumer groups (not kept: every method refuses) ----------------

    def _no_groups(self) -> Unimplemented:
        self._check_open()
        return Unimplemented(
            "consumer groups are not supported on the jetstream backend yet: its gateways are "
            "stateless and several serve at once, while a group's dispatcher lives in one "
            "process; use the rocksdb backend for groups"
        )

    async def create_group(
        self, config: GroupConfig, acked_through: int, max_groups: int
    ) -> tuple[GroupConfig, bool]:
        raise self._no_groups()

    async def get_group(self, space: str, name: str) -> GroupState | None:
        raise self._no_groups()

    async def list_groups(self, space: str, after: str | None, limit: int) -> list[GroupConfig]:
        raise self._no_groups()

    async def delete_group(self, space: str, name: str) -> bool:
        raise self._no_groups()

    async def settle_group(
        self,
        space: str,
        name: str,
        acked_through: int,
        settled: Sequence[int],
        parked: Transaction | None,
    ) -> ProduceResult | None:
        raise self._no_groups()

    # -- life cycle ------------------------------------------------------

    def disk_usage(self) -> DiskUsage | None:
        return None  # the files are the NATS servers'; their own monitoring reports them

    @property
    def write_error(self) -> str | None:
        if self._closed:
            return "the store is closed"
        if not self._nc.is_connected:
            return "not connected to the NATS cluster"
        return None

    def background(self) -> Sequence[BackgroundTask]:
        return ()  # dedupe entries expire with the bucket's max_age

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tail.close()
        await self._feeds.close()
        await self._nc.close()


async def open_store(setup: Setup) -> JetStreamStore:
    """The JetStream backend's opener: ``--data`` is not used."""
    options = setup.options
    servers = options["nats_url"]
    if isinstance(servers, str):  # the default, not parsed by the option's kind
        servers = urls(servers)
    nc = await connection.connect(servers)
    store = JetStreamStore(
        nc,
        Names(options["nats_prefix"]),
        options["nats_replicas"],
        setup.dedupe_window_ns,
        setup.clock,
        Tail(1, 1, setup.follow_linger, setup.memory, setup.watch_change_bytes),
    )
    await store.start()
    return store
