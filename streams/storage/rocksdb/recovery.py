"""Opening RocksDB: a torn tail is recovered, damage is refused, a full disk still serves reads.

Before RocksDB replays its write-ahead log, :mod:`streams.storage.rocksdb.wal` reads
the log with its checksums and finds where, if anywhere, it stops being
intact, since RocksDB cannot tell the cases apart and drops some damage
without a word (see that module). Then:

- No break: RocksDB opens with *tolerate corrupted tail records*, as usual.
- A break with intact writes after it: acknowledged writes would be lost, so
  the open fails with :class:`~streams.errors.DataLoss` naming the file, the
  damaged bytes and the writes after them. Nothing is changed on disk.
- A torn tail (the file ends inside the last write, or zeros fill it to the
  end) that the server never recorded as durable (see
  :mod:`streams.storage.rocksdb.durable_mark`): a crash or a power cut left it, the
  write was never acknowledged; the file is cut back to the last intact write
  (what RocksDB's *point in time* recovery would keep) with a warning naming
  the bytes.
- Any other break of the last write (a complete record whose checksum fails,
  or a tail the server had recorded durable): damage that may have been
  acknowledged. Refused (DataLoss), unless the operator says to drop it
  (``tail_damage="drop"``, ``--wal-tail-damage drop``): then it is dropped
  with an error naming the file, the bytes and the write.

Then RocksDB replays the log read-only (nothing written) and must recover
every intact write the scan found, else the open fails with DataLoss: asked
after a writable open, it would already have flushed and deleted the log, and
the next start would open without a word.

Writable recovery flushes the replayed log into a table file, so it needs
free space about the size of the memtable (which also bounds the log). When
the disk is too full for that, the store opens read-only (a replay into
memory, nothing written) and says why writes are refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from streams.errors import DataLoss
from streams.storage.rocksdb import durable_mark, wal

log = logging.getLogger(__name__)

# RocksDB's own info logs (LOG, LOG.old.*): each open starts a new one, so
# keep a few, small, or repeated starts on a full disk would fill it further.
INFO_LOG_FILES = 4
INFO_LOG_BYTES = 1024 * 1024

_Mode = Callable[[], rocksdict.DBRecoveryMode]
_TOLERATE_TAIL: _Mode = rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records


TAIL_DAMAGE = ("refuse", "drop")


@dataclass(frozen=True, slots=True)
class Opened:
    """An open database; ``read_only`` says why writes are refused, if they are;
    ``dropped`` what recovery dropped from the log, if anything."""

    db: rocksdict.Rdict
    read_only: str | None
    dropped: str | None = None


def is_no_space(exc: BaseException) -> bool:
    text = str(exc)
    return "No space" in text or "NoSpace" in text


def is_corruption(exc: BaseException) -> bool:
    return "Corruption" in str(exc)


def open_db(path: Path, memtable_bytes: int, tail_damage: str = "refuse") -> Opened:
    """Opens the database at ``path`` writable, or read-only when the disk is too
    full to recover; raises DataLoss when the log is damaged (see the module)."""
    if tail_damage not in TAIL_DAMAGE:
        raise ValueError(f"tail_damage must be one of {TAIL_DAMAGE}, got {tail_damage!r}")
    found = wal.scan(log_files(path))
    dropped = None
    if found.broken is not None:
        dropped = _judge(path, found, found.broken, tail_damage)
        _cut(found.broken)
    try:
        _check_recovered(path, memtable_bytes, found)
        db = _open(path, memtable_bytes, _TOLERATE_TAIL)
    except DataLoss:
        raise
    except Exception as exc:
        if is_corruption(exc):
            raise DataLoss(
                f"RocksDB cannot recover the write-ahead log of {path} ({exc}; log files: "
                f"{_names(found.files)}); the data directory was left as it is"
            ) from exc
        if not is_no_space(exc):
            raise
        reason = (
            f"the disk under {path} is full ({exc}); reads are served, writes resume "
            "once RocksDB can recover its log, which needs about one memtable of free space"
        )
        log.error("opening the store read-only: %s", reason)
        return Opened(_open(path, memtable_bytes, _TOLERATE_TAIL, read_only=True), reason, dropped)
    return Opened(db, None, dropped)


def log_files(path: Path) -> list[Path]:
    """RocksDB's write-ahead log files under ``path``, oldest first."""
    logs = [p for p in path.glob("*.log") if p.stem.isdigit()]
    return sorted(logs, key=lambda p: int(p.stem))


def _judge(path: Path, found: wal.Scan, broken_at: wal.Break, tail_damage: str) -> str:
    """Raises DataLoss unless the break may be dropped; returns what is dropped.
    Decided from the log and the durable mark alone: RocksDB is not asked, as
    some damage makes its replay loop forever (a FULL record's type byte with
    one bit flipped into a recycled-log type)."""
    base, durable = durable_mark.read(path)
    # What recovery keeps: the writes before the break, else what the tables held.
    kept = found.last_intact.last_sequence if found.last_intact else base
    where = f"the write-ahead log of {path}"
    broken = found.describe_break()
    if found.later:
        raise DataLoss(
            f"{where} is damaged before its end: {broken}; {found.describe_later()} would be "
            "lost; the data directory was left as it is"
        )
    if broken_at.kind != "damage" and durable <= kept:
        log.warning(
            "%s ends in a torn write, dropped: %s. A crash or power cut leaves this and the "
            "write was never acknowledged (writes are acknowledged after their fsync; the "
            "server recorded writes durable up to sequence %d, all kept)",
            where,
            broken,
            durable,
        )
        return f"a torn write: {broken}"
    if durable > kept:
        why = (
            f"the server had recorded writes up to sequence {durable} as durable "
            f"({durable_mark.NAME}) and the log keeps them only up to {kept}: "
            f"{durable - kept} acknowledged sequence numbers are damaged"
        )
    else:
        why = (
            "a complete record that fails its checksum is damage, never a write a crash "
            "cut short, and it may have been acknowledged"
        )
    if tail_damage != "drop":
        raise DataLoss(
            f"{where} has a damaged last write: {broken}; {why}. The data directory was "
            "left as it is. To start anyway, dropping that write and nothing before it, "
            "start once with --wal-tail-damage drop (STREAMS_WAL_TAIL_DAMAGE=drop)"
        )
    log.error(
        "%s has a damaged last write, dropped (--wal-tail-damage drop): %s; %s; every write "
        "up to sequence %d is kept",
        where,
        broken,
        why,
        kept,
    )
    return f"a damaged write: {broken}"


def _cut(broken: wal.Break) -> None:
    """Drops the log from the break on, durably, so that RocksDB replays an
    intact log (and never meets the damage)."""
    fd = os.open(broken.file, os.O_WRONLY)
    try:
        os.ftruncate(fd, broken.start)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_recovered(path: Path, memtable_bytes: int, found: wal.Scan) -> None:
    """Raises DataLoss if RocksDB recovers fewer writes than the log holds intact.
    RocksDB is asked read-only (a replay into memory): a writable open flushes
    what it recovered and deletes the log, so a refusal after it would be
    gone at the next start, and the loss with it."""
    if found.last_intact is None:
        return
    db = _open(path, memtable_bytes, _TOLERATE_TAIL, read_only=True)
    try:
        latest = db.latest_sequence_number()
    finally:
        _close(db)
    if latest < found.last_intact.last_sequence:
        raise DataLoss(
            f"RocksDB recovered the write-ahead log of {path} up to sequence {latest}, "
            f"but it holds intact writes up to {found.last_intact.last_sequence} "
            f"(log files: {_names(found.files)}); the data directory was left as it is"
        )


def _names(files: tuple[Path, ...]) -> str:
    return ", ".join(p.name for p in files) or "none"


def _close(db: rocksdict.Rdict) -> None:
    with contextlib.suppress(Exception):
        db.close()


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
