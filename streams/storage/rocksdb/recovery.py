"""Opening RocksDB: a torn tail is recovered, damage is refused, a full disk still serves reads.

Recovery replays the write-ahead log with RocksDB's *tolerate corrupted tail
records* mode: a log that ends in a partial record (the write a crash or a
power cut interrupted, never acknowledged) opens as usual, while a bad record
stops the open. RocksDB's default mode, *point in time*, would instead drop
everything after the first bad record and say nothing, acknowledged writes
included.

A bad record is not always damage: a power cut can also leave the last
record complete in length but with garbage or zeros in it. So when the log
does not open, two read-only replays (which write nothing) tell the cases
apart: one stops at the first bad record, the other skips bad records and
goes on. If the second finds writes after the damage, acknowledged writes
would be lost: the open fails with :class:`~streams.errors.DataLoss` naming
the log files. Otherwise only the tail was bad, and the store opens with
point-in-time recovery, which drops just that tail.

Writable recovery flushes the replayed log into a table file, so it needs
free space about the size of the memtable (which also bounds the log). When
the disk is too full for that, the store opens read-only (a replay into
memory, nothing written) and says why writes are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from streams.errors import DataLoss

log = logging.getLogger(__name__)

# RocksDB's own info logs (LOG, LOG.old.*): each open starts a new one, so
# keep a few, small, or repeated starts on a full disk would fill it further.
INFO_LOG_FILES = 4
INFO_LOG_BYTES = 1024 * 1024

_Mode = Callable[[], rocksdict.DBRecoveryMode]
_TOLERATE_TAIL: _Mode = rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records
_POINT_IN_TIME: _Mode = rocksdict.DBRecoveryMode.point_in_time
_SKIP_DAMAGE: _Mode = rocksdict.DBRecoveryMode.skip_any_corrupted_record


@dataclass(frozen=True, slots=True)
class Opened:
    """An open database; ``read_only`` says why writes are refused, if they are."""

    db: rocksdict.Rdict
    read_only: str | None


def is_no_space(exc: BaseException) -> bool:
    text = str(exc)
    return "No space" in text or "NoSpace" in text


def is_corruption(exc: BaseException) -> bool:
    return "Corruption" in str(exc)


def open_db(path: Path, memtable_bytes: int) -> Opened:
    """Opens the database at ``path`` writable, or read-only when the disk is too
    full to recover; raises DataLoss when the log is damaged before its end."""
    mode = _TOLERATE_TAIL
    try:
        return Opened(_open(path, memtable_bytes, mode), None)
    except Exception as exc:
        failure = exc
        if is_corruption(exc):
            _check_tail_only(path, memtable_bytes, exc)
            mode = _POINT_IN_TIME
            try:
                return Opened(_open(path, memtable_bytes, mode), None)
            except Exception as again:
                failure = again
        if not is_no_space(failure):
            raise
    reason = (
        f"the disk under {path} is full ({failure}); reads are served, writes resume "
        "once RocksDB can recover its log, which needs about one memtable of free space"
    )
    log.error("opening the store read-only: %s", reason)
    return Opened(_open(path, memtable_bytes, mode, read_only=True), reason)


def _options(memtable_bytes: int, mode: _Mode) -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_paranoid_checks(True)
    options.set_wal_recovery_mode(mode())
    # The log holds what the memtables hold: bounding them bounds the log,
    # and so what a recovery must replay and find room for.
    options.set_write_buffer_size(memtable_bytes)
    options.set_keep_log_file_num(INFO_LOG_FILES)
    options.set_max_log_file_size(INFO_LOG_BYTES)
    return options


def _open(path: Path, memtable_bytes: int, mode: _Mode, read_only: bool = False) -> rocksdict.Rdict:
    options = _options(memtable_bytes, mode)
    if read_only:
        access = rocksdict.AccessType.read_only(False)
        return rocksdict.Rdict(str(path), options, access_type=access)
    db = rocksdict.Rdict(str(path), options)
    # Records recovered from the WAL may sit only in the page cache (a kill -9
    # before their fsync). With these options recovery writes them to fsynced
    # table files; this fsync keeps them durable before anyone reads them
    # should recovery ever keep them in the WAL instead.
    db.flush_wal(True)
    return db


def _latest_sequence(path: Path, memtable_bytes: int, mode: _Mode) -> int:
    access = rocksdict.AccessType.read_only(False)
    db = rocksdict.Rdict(str(path), _options(memtable_bytes, mode), access_type=access)
    try:
        return db.latest_sequence_number()
    finally:
        db.close()


def _check_tail_only(path: Path, memtable_bytes: int, error: Exception) -> None:
    """Raises DataLoss unless the bad record that stopped recovery is at the end of the log."""
    up_to_damage = _latest_sequence(path, memtable_bytes, _POINT_IN_TIME)
    past_damage = _latest_sequence(path, memtable_bytes, _SKIP_DAMAGE)
    logs = ", ".join(sorted(p.name for p in path.glob("*.log"))) or "none"
    if past_damage > up_to_damage:
        raise DataLoss(
            f"the write-ahead log of {path} is damaged before its end ({error}; log files: "
            f"{logs}): {past_damage - up_to_damage} writes were logged after the damage and "
            "would be lost; the data directory was left as it is"
        )
    log.warning(
        "the write-ahead log of %s ends in a bad record (%s; log files: %s): a write cut off "
        "by a crash, never acknowledged; dropping it",
        path,
        error,
        logs,
    )
