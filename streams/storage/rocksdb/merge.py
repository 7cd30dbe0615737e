"""Merged runs: small chunks of a space read as one.

Each Produce stores its records of a segment as chunks of their own (see
:mod:`.chunks`), so a space written one record per Produce holds one chunk
per record, and reading it costs an iterator step and the Python work of a
chunk per record: five times what the same records cost written 100 per
Produce. The ``merge`` background task copies runs of consecutive small
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

Cost: the records of small chunks are stored a third time (about 2 %
per-chunk overhead aside), in batches of ``merge_run_bytes``.

This module keeps the bookkeeping: which spaces got small chunks since the
last pass, and where each space's runs end (a bounded cache; a space it
forgot is looked up from its last run).
"""

from __future__ import annotations

# Spaces whose merge position is remembered; others are looked up on disk.
CURSORS = 4096


class Merges:
    """The spaces due a merge pass, and where their merged runs end."""

    def __init__(self) -> None:
        self._due: set[str] = set()
        self._cursors: dict[str, int] = {}

    def note(self, space: str) -> None:
        """``space`` got a small chunk."""
        self._due.add(space)

    def take(self) -> list[str]:
        """The spaces due, then forgotten (sorted: a pass visits them in order)."""
        due = sorted(self._due)
        self._due.clear()
        return due

    def cursor(self, space: str) -> int | None:
        """The first position of ``space`` not examined yet, if remembered."""
        return self._cursors.get(space)

    def advance(self, space: str, position: int) -> None:
        self._cursors.pop(space, None)  # re-inserted last: the oldest goes first
        self._cursors[space] = position
        if len(self._cursors) > CURSORS:
            del self._cursors[next(iter(self._cursors))]

    def forget(self, space: str) -> None:
        self._cursors.pop(space, None)

    def clear(self) -> None:
        self._due.clear()
        self._cursors.clear()
