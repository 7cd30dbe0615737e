"""The server's own note of how far the write-ahead log is durable.

The log alone cannot tell a write a crash cut short (never acknowledged) from
damage to the last acknowledged write. So after each WAL fsync the store
writes the last RocksDB sequence number that fsync covers into
``STREAMS-DURABLE`` in the data directory: 8 bytes rewritten in place, with no
fsync of its own, so it costs one ``pwrite`` per group commit. Before them, the
file holds the last sequence the open recovered (all of it in table files),
where the log of this run starts.

It is written after the fsync, so it never runs ahead of the durable log. It
survives ``kill -9`` (the page cache does), so after a process crash it is
exact: a break in the log at or below it is damage to durable writes, never a
torn one. After a power cut it may be older than the last fsync, so it only
ever proves a write durable, never that one was not. Under ``--no-sync``
nothing is durable before the operating system writes it back, so it is not
kept.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "STREAMS-DURABLE"
_BASE = struct.Struct(">Q")  # at offset 0: the last sequence in table files at the open
_MARK = struct.Struct(">Q")  # at offset 8: the last sequence made durable since


def read(directory: Path) -> tuple[int, int]:
    """(the sequence the last run opened at, the last it recorded durable); (0, 0)
    when none was (a new store, one from before this file, a file cut short)."""
    try:
        data = (directory / NAME).read_bytes()
    except FileNotFoundError:
        return 0, 0
    if len(data) != _BASE.size + _MARK.size:
        return 0, 0
    return _BASE.unpack_from(data)[0], _MARK.unpack_from(data, _BASE.size)[0]


class DurableMark:
    """Records the durable sequence; see the module."""

    def __init__(self, directory: Path, sequence: int) -> None:
        """Opens (creating) the file and records ``sequence``, durably: what an
        open recovered is in table files, so this starts every run exact."""
        path = directory / NAME
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(self._fd, _BASE.pack(sequence) + _MARK.pack(sequence), 0)
            os.fsync(self._fd)
            if created:
                _fsync_directory(directory)
        except BaseException:
            os.close(self._fd)
            raise

    def record(self, sequence: int) -> None:
        """Notes that every write up to ``sequence`` is durable."""
        os.pwrite(self._fd, _MARK.pack(sequence), _BASE.size)

    def close(self) -> None:
        os.close(self._fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
