"""Merged runs: small chunks of a space or segment read as one.

Each Produce stores its records of a segment as chunks of their own (see
:mod:`.chunks`), so a space written one record per Produce holds one chunk
per record (under its segment's ``R`` keys and its space's ``P`` keys), and
reading it costs an iterator step and the Python work of a chunk per record
(about 8 us: 3 % of the rate of the same records written 100 per Produce,
read over gRPC). The ``merge`` background task copies runs of consecutive
small chunks of a space into one chunk per run under the space's ``M`` keys,
and of a segment under the segment's ``N`` keys (see :mod:`.layout`), keyed
by the run's first offset; a read takes the records from a run when one
holds them.

Why a copy, not a rewrite of the chunks: a chunk holds one segment write
(one segment, consecutive sequences and positions, one timestamp), which
removals, holes and time look-ups rely on; a run of a space mixes segments,
a run of a segment has gaps in its positions. So the chunks stay as they
are, for every path but plain reads, and a run is used only where that does
not matter: a read of a segment, or of a whole space (no segment filter)
from above its holes (every record there retained).

Why it is safe:

- A run copies durable records only (at or below the durable last offset
  when it is planned), and an offset's record never changes once durable
  (numbers are never reused): a run holds exactly the records its chunks
  hold, whether a reader sees it or not, durable or not, and a crash that
  loses it loses a copy.
- It is one batch of puts (atomic); planning and writing run with no await
  between, within the store's removal lock, so no trim, delete or retention
  slice moves a first offset meanwhile; a reader's iterators are snapshots
  taken within one synchronous read.
- Removals delete runs as they delete chunks: those wholly below the first
  offset (by range; a space trim deletes a segment's one by one, as it does
  the segment's chunks), and all of a deleted space's or segment's.

Cost: the records of small chunks are stored twice more (a space run and a
segment run), written once more each.

This module keeps the bookkeeping: which targets got small chunks since the
last pass (at most ``due`` of them, ``StoreOptions.merge_due_targets``: past
it a target is noted again at its next small write, reads of it are only
slower meanwhile, so that writes to many segments between two passes hold no
more memory than this; none after a restart, so a target is looked at again
once it gets small chunks), and where each target's runs end (at most
``cursors`` of them, ``StoreOptions.merge_cursors``; a target it forgot is
looked up from its last run).
"""

from __future__ import annotations

from streams.model import Target


class Merges:
    """The targets (spaces and segments) due a merge pass, and where their
    merged runs end."""

    def __init__(self, due: int, cursors: int) -> None:
        if due < 1 or cursors < 1:
            raise ValueError(f"due ({due}) and cursors ({cursors}) must be positive")
        self._most_due = due
        self._most_cursors = cursors
        self._due: set[Target] = set()
        self._cursors: dict[Target, int] = {}

    def note(self, target: Target) -> None:
        """``target`` got a small chunk, or a pass did not finish it."""
        if len(self._due) < self._most_due:
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
        if len(self._cursors) > self._most_cursors:
            del self._cursors[next(iter(self._cursors))]

    def clear(self) -> None:
        self._due.clear()
        self._cursors.clear()
