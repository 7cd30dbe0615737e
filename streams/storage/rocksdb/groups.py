"""The RocksDB engine's consumer groups: a group's stored head, and when the
settled-position keys it no longer needs are collected (see :mod:`.layout`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from streams.storage.rocksdb.layout import GROUP_HEAD


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
