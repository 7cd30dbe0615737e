"""Damage on disk, as a failing disk would leave it, for the corruption tests."""

from __future__ import annotations

from pathlib import Path


def flip_byte(path: Path, offset: int) -> None:
    """Inverts the byte at ``offset`` of the file at ``path``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def the_wal(data: Path) -> Path:
    """The one write-ahead log of the RocksDB store under ``data``."""
    logs = sorted(data.glob("*.log"))
    assert len(logs) == 1, f"expected one write-ahead log under {data}: {logs}"
    return logs[0]
