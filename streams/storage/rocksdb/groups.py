"""The RocksDB engine's consumer groups: a group's stored head, the value of
a settled-positions key, and when the keys it no longer needs are collected
(see :mod:`.layout`)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streams import codec
from streams.storage.rocksdb.layout import GROUP_HEAD


def pack_settled(positions: Sequence[int]) -> bytes:
    """The value of the K key of ``positions`` (ascending, distinct), keyed by
    the last (highest) one: the gaps down from it to each one before, as
    varints (one byte each while the positions settled together are close)."""
    gaps = [high - low for high, low in itertools.pairwise(reversed(positions))]
    if not gaps or max(gaps) < 0x80:
        return bytes(gaps)
    return b"".join(map(codec.varint, gaps))


def unpack_settled(highest: int, value: bytes) -> list[int]:
    """The positions of a K key, from ``highest`` (its key's) down: those its
    value holds. ValueError when the value is not one :func:`pack_settled`
    made (an empty value, as keys of one position were first written, is
    that position alone)."""
    found = [highest]
    position = highest
    gap = shift = 0
    for byte in value:
        gap |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                raise ValueError("a gap longer than 10 bytes")
            continue
        position -= gap
        if gap < 1 or position < 1:
            raise ValueError(f"a gap of {gap} down from {position + gap}")
        found.append(position)
        gap = shift = 0
    if shift:
        raise ValueError("the last gap is cut short")
    return found


@dataclass(frozen=True, slots=True)
class GroupHead:
    """The value under a group's G key: its progress head and its config as
    :mod:`streams.storage.groups` encodes it."""

    acked_through: int
    parked: int
    # No K key of the group at or below this is left.
    collected: int
    config: bytes

    @classmethod
    def parse(cls, raw: bytes) -> GroupHead:
        """ValueError when ``raw`` is too short to be a head."""
        if len(raw) <= GROUP_HEAD.size:
            raise ValueError(f"a group head of {len(raw)} bytes (at least {GROUP_HEAD.size + 1})")
        acked_through, parked, collected = GROUP_HEAD.unpack_from(raw)
        return cls(acked_through, parked, collected, raw[GROUP_HEAD.size :])

    def pack(self) -> bytes:
        return GROUP_HEAD.pack(self.acked_through, self.parked, self.collected) + self.config


@dataclass(slots=True)
class _Since:
    at: float
    written: int = 0


class Collector:
    """Decides when a settle also deletes its group's stale K keys (those at or
    below acked_through): once ``seconds`` have passed since the group's last
    collection (or its first settle since the store opened), or once ``keys``
    K keys were written since. So a busy group adds one range tombstone every
    few seconds, never one per settle: RocksDB reads every tombstone of the
    memtable each time it makes an iterator. Kept in memory, one entry per
    group settled since the store opened."""

    def __init__(
        self, seconds: float, keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._seconds = seconds
        self._keys = keys
        self._clock = clock
        self._groups: dict[tuple[str, str], _Since] = {}

    def due(self, group: tuple[str, str], written: int, stale: bool) -> bool:
        """Notes ``written`` K keys of a settle of ``group``; whether that
        settle collects (only when something is ``stale``)."""
        since = self._groups.get(group)
        if since is None:
            since = self._groups[group] = _Since(self._clock())
        since.written += written
        if not stale:
            return False
        return since.written >= self._keys or self._clock() - since.at >= self._seconds

    def collected(self, group: tuple[str, str]) -> None:
        """``group``'s stale keys were just deleted."""
        self._groups[group] = _Since(self._clock())

    def forget(self, group: tuple[str, str]) -> None:
        self._groups.pop(group, None)

    def forget_space(self, space: str) -> None:
        """Every group of ``space`` is gone."""
        for group in [group for group in self._groups if group[0] == space]:
            del self._groups[group]
