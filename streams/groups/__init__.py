"""Consumer groups: many members share one space's records, at least once,
each segment in order (see :mod:`streams.groups.registry`, the entry point)."""

from streams.groups.registry import Groups, GroupStats, LiveGroup, Member

__all__ = ["GroupStats", "Groups", "LiveGroup", "Member"]
