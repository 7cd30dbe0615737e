"""Frames between a front and the store host: a 4-byte big-endian length, then
a pickle (protocol 5) of a tuple of :mod:`streams.model` values, port results
and :mod:`streams.errors` exceptions.

Both ends are trusted processes of one server, started by the writer with a
socket in a 0700 directory, so pickle is safe here; a frame's length is still
checked against :func:`max_frame_bytes` so that a broken peer cannot make
either end buffer without bound.
"""

from __future__ import annotations

from streams.limits import Limits


class FrameError(Exception):
    """A frame over the size limit, or one that does not decode: the
    connection is broken and is closed."""


def max_frame_bytes(limits: Limits) -> int:
    """The largest frame either end accepts: a whole request or response of
    the server's limits, with room for the numbers and names around it."""
    raise NotImplementedError
