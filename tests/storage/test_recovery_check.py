"""After the scan of the write-ahead log finds it intact, the open checks that
RocksDB recovers every write it holds (streams/storage/rocksdb/recovery.py),
and a refusal stays a refusal: nothing on disk changes before the decision."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.errors import DataLoss
from streams.storage.rocksdb import recovery, wal

MEMTABLE = 64 << 20
WRITES = 50


def crash_image_after_restart(path: Path) -> Path:
    """The crash image of a store that was restarted once (its manifest keeps
    only logs from the current one on), WRITES writes in its log; its log."""
    store = path / "db"
    recovery.open_db(store, MEMTABLE).db.close()
    db = recovery.open_db(store, MEMTABLE).db
    for i in range(WRITES):
        db.put(b"k%d" % i, b"v" * 100)
    db.flush_wal(True)
    image = path / "image"
    shutil.copytree(store, image)
    db.close()
    (log,) = recovery.log_files(image)
    assert int(log.stem) > 2
    return log


def test_rocksdb_recovering_fewer_writes_than_the_log_holds_is_refused_at_every_start(
    tmp_path: Path,
) -> None:
    """RocksDB skips an intact log (renamed below the manifest's first log, it
    is taken for obsolete, its writes for being in table files: they are not):
    the open is refused, the log is left as it is, and the next open is
    refused the same way. On the old code RocksDB was asked by a writable open,
    which flushed and deleted the log before the refusal: the next start opened
    with the 50 writes gone, without a word."""
    log = crash_image_after_restart(tmp_path).rename(tmp_path / "image" / "000002.log")
    found = wal.scan([log])
    assert found.broken is None and found.last_intact is not None
    assert found.intact == WRITES
    before = log.read_bytes()
    for _attempt in range(2):
        with pytest.raises(DataLoss) as caught:
            recovery.open_db(log.parent, MEMTABLE)
        assert recovery.log_files(log.parent) == [log]
        assert log.read_bytes() == before
        message = str(caught.value)
        assert f"holds intact writes up to {found.last_intact.last_sequence}" in message
        assert log.name in message and "left as it is" in message, message


def test_an_intact_log_recovered_whole_opens(tmp_path: Path) -> None:
    """The control: the same image with its log under its own number opens
    with every write (asked read-only first, then opened)."""
    log = crash_image_after_restart(tmp_path)
    opened = recovery.open_db(log.parent, MEMTABLE)
    try:
        assert opened.read_only is None
        assert all(opened.db[b"k%d" % i] == b"v" * 100 for i in range(WRITES))
    finally:
        opened.db.close()
