"""What every backend that keeps consumer groups shares (port rule 15): the
checks of a settle, the shape of the progress it returns, and the stored form
of a group's config.

A backend keeps a group's ``acked_through`` as it was last given (the check
that it never goes back compares with that) and the settled positions above
it, in any order, stale ones included; :func:`progress` turns them into the
:class:`~streams.model.GroupProgress` every backend returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from streams.model import GroupConfig, GroupProgress, GroupStart, Ordering
from streams.storage import port


def check_forward(space: str, name: str, stored: int, given: int) -> None:
    """Raises InvariantViolation when a settle would move the ``acked_through``
    of group ``name`` back from ``stored`` (as last given) to ``given``."""
    if given < stored:
        raise port.group_went_back(space, name, stored, given)


def progress(acked_through: int, positions: Iterable[int], parked: int) -> GroupProgress:
    """The progress of a group whose every position up to ``acked_through`` is
    settled, and ``positions`` too: those at or below it dropped, the rest
    merged into sorted disjoint ranges; a range that starts right after
    ``acked_through`` extends it (so every range starts above
    ``acked_through + 1``, as GroupProgress says)."""
    ranges: list[list[int]] = []
    for position in sorted(set(positions)):
        if position <= acked_through:
            continue
        if ranges and ranges[-1][1] + 1 == position:
            ranges[-1][1] = position
        else:
            ranges.append([position, position])
    if ranges and ranges[0][0] == acked_through + 1:
        acked_through = ranges.pop(0)[1]
    return GroupProgress(acked_through, tuple((first, last) for first, last in ranges), parked)


# -- the stored config --------------------------------------------------------

# Bump when the encoding changes; a reader refuses versions it does not know.
_CONFIG_VERSION = 1


def encode_config(config: GroupConfig) -> bytes:
    """A config as stored (UTF-8 JSON: small, written once per group)."""
    return json.dumps(
        {
            "v": _CONFIG_VERSION,
            "space": config.space,
            "name": config.name,
            "ordering": config.ordering.value,
            "start": [config.start.kind, config.start.value],
            "ack_timeout_ns": config.ack_timeout_ns,
            "max_attempts": config.max_attempts,
            "dead_letter_space": config.dead_letter_space,
            "dead_letter_segment": config.dead_letter_segment,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


def decode_config(raw: bytes) -> GroupConfig:
    """The config :func:`encode_config` stored; ValueError when the bytes are
    not one (the backend reports it as damage, naming where it found them)."""
    try:
        found = json.loads(raw.decode("utf-8"))
        if found["v"] != _CONFIG_VERSION:
            raise ValueError(f"unknown group config version {found['v']!r}")
        kind, value = found["start"]
        return GroupConfig(
            space=str(found["space"]),
            name=str(found["name"]),
            ordering=Ordering(found["ordering"]),
            start=GroupStart(str(kind), int(value)),
            ack_timeout_ns=int(found["ack_timeout_ns"]),
            max_attempts=int(found["max_attempts"]),
            dead_letter_space=str(found["dead_letter_space"]),
            dead_letter_segment=str(found["dead_letter_segment"]),
        )
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not a stored group config: {exc!r}") from exc
