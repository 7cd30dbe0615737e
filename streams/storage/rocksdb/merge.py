"""Merged runs: small chunks of a space read as one.

Each Produce stores its records of a segment as chunks of their own (see
:mod:`.chunks`), so a space written one record per Produce holds one chunk
per record, and reading it costs an iterator step and the Python work of a
chunk per record (about 8 us: 3 % of the rate of the same records written
100 per Produce, read over gRPC). The ``merge`` background task copies runs of consecutive small
chunks of a space (under its ``P`` keys) into one chunk per run under the
space's ``M`` keys (see :mod:`.layout`), keyed by the run's first position;
a read of the space takes the records from a merged run when one holds them.

Why a copy, not a rewrite of the ``P`` chunks: a ``P`` chunk holds one segment
write (one segment, consecutive sequences, one timestamp), which removals,
holes and time look-ups rely on; a merged run mixes segments. So the ``P``
chunks stay as they are, for every path but the plain read of a space, and a
merged run is used only where that mix does not matter: a read of the whole
space (no segment filter) from above its holes (every record there retained).

Why it is safe:

- A run copies durable records only (at or below the durable last position
  when it is planned), and a position's record never changes once durable:
  a run holds exactly the records its ``P`` chunks hold, whether a reader
  sees it or not, durable or not, and a crash that loses it loses a copy.
- It is one batch of puts (atomic); planning and writing run with no await
  between, within the store's removal lock, so no trim, delete or retention
  slice moves a first position meanwhile; a reader's iterators are
  snapshots taken within one synchronous read.
- Removals delete runs as they delete chunks: those wholly below the first
  position, and all of a deleted space's (see the store's removals).

Cost: the records of small chunks are stored a third time, written once
more (a step's runs in one batch). Segment reads still take a chunk per
small transaction: a run per segment would need its own removals.

This module keeps the bookkeeping: which spaces got small chunks since the
last pass (their names: as many as spaces written between two passes; none
after a restart, so a space is looked at again once it gets small chunks),
and where each space's runs end (a bounded cache; a space it forgot is
looked up from its last run).
"""

from __future__ import annotations

from streams.model import Target

# Targets whose merge position is remembered; others are looked up on disk.
CURSORS = 4096


class Merges:
    """The targets (spaces and segments) due a merge pass, and where their
    merged runs end."""

    def __init__(self) -> None:
        self._due: set[Target] = set()
        self._cursors: dict[Target, int] = {}

    def note(self, target: Target) -> None:
        """``target`` got a small chunk."""
        self._due.add(target)

    def take(self) -> list[Target]:
        """The targets due, then forgotten (sorted: a pass visits them in order)."""
        due = sorted(self._due, key=lambda target: (target.space, target.segment))
        self._due.clear()
        return due

    def cursor(self, target: Target) -> int | None:
        """The first offset of ``target`` not examined yet, if remembered."""
        return self._cursors.get(target)

    def advance(self, target: Target, offset: int) -> None:
        self._cursors.pop(target, None)  # re-inserted last: the oldest goes first
        self._cursors[target] = offset
        if len(self._cursors) > CURSORS:
            del self._cursors[next(iter(self._cursors))]

    def clear(self) -> None:
        self._due.clear()
        self._cursors.clear()
