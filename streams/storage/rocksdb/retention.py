"""Which segments a retention pass looks at for ``max_records_per_segment``.

A segment gets more records than the policy keeps only by being appended to,
so a pass need only look at the segments appended to since the last pass:
each space whose policy limits records per segment gets a set of names,
filled by every commit and emptied by the pass. A space without a set (the
first pass after the server started, or after its config changed) has all of
its segments looked at once (cost: its segment catalog, no record), then gets
one. Memory: the names of the segments written between two passes.
"""

from __future__ import annotations

from collections.abc import Iterable


class Appended:
    """The segments appended to since the last retention pass, per tracked space."""

    def __init__(self) -> None:
        self._spaces: dict[str, set[str]] = {}

    def appended(self, space: str, segments: Iterable[str]) -> None:
        names = self._spaces.get(space)
        if names is not None:
            names.update(segments)

    def take(self, space: str) -> set[str] | None:
        """The segments appended to since the last call, then forgotten; None
        when the space is not tracked (every segment is due)."""
        names = self._spaces.get(space)
        if names is not None:
            self._spaces[space] = set()
        return names

    def track(self, space: str) -> None:
        """Notes appends to ``space`` from now on."""
        self._spaces.setdefault(space, set())

    def forget(self, space: str) -> None:
        """Stops noting appends (the space's policy no longer asks, or changed)."""
        self._spaces.pop(space, None)

    def clear(self) -> None:
        self._spaces.clear()
