"""The RocksDB engine (``--storage rocksdb``, the default): one process, one
embedded database (through rocksdict), records fsynced before they are acked.

Split by job: :mod:`.layout` (keys, value formats, the on-disk format
version), :mod:`.chunks` (how records are packed into values),
:mod:`.merge` (merged runs of small chunks),
:mod:`.store` (the store and its opener), :mod:`.group_commit` (one fsync
acks many writes) and :mod:`.recovery` (opening after a crash or a full disk).

Only the backend's description is defined here, so that the registry can
name this engine without loading rocksdict.
"""

import argparse

from streams.storage.backend import Backend, Option, at_least, positive_float, positive_int


def _tail_damage(text: str) -> str:
    if text not in ("refuse", "drop"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be refuse or drop")
    return text


BACKEND = Backend(
    "rocksdb",
    "RocksDB in the --data folder: durable, one server process",
    "streams.storage.rocksdb.store:open_store",
    options=(
        Option(
            "memtable-bytes",
            positive_int,
            16 * 1024 * 1024,
            "RocksDB's memtable size. It bounds the write-ahead log too: recovery after a "
            "crash or a full disk replays at most about this much and needs about this much "
            "free space.",
        ),
        Option(
            "wal-tail-damage",
            _tail_damage,
            "refuse",
            "A damaged last write in the write-ahead log (a complete record that fails its "
            "checksum, or a tail the server recorded durable): refuse to start, or drop it "
            "and start. A write a crash cut short is always dropped.",
        ),
        Option(
            "catalog-cache-bytes",
            positive_int,
            64 * 1024 * 1024,
            "Memory for the numbers of recently used spaces and segments (about 400 bytes "
            "plus their names each); the others are read from disk when used.",
        ),
        Option(
            "dedupe-sweep-seconds",
            positive_float,
            60.0,
            "How often expired dedupe entries are deleted.",
        ),
        Option(
            "reclaim-seconds",
            positive_float,
            5.0,
            "How often the disk space of removed records (trims, deletes, retention) is "
            "given back: the key ranges removed since the last time are compacted.",
        ),
        Option(
            "merge-seconds",
            positive_float,
            1.0,
            "How often the small chunks of spaces written in small transactions are copied "
            "into merged runs, which a read of the space takes as one.",
        ),
        Option(
            "merge-small-bytes",
            at_least(0),
            8 * 1024,
            "A chunk (one segment write of a transaction) under this size is small: runs "
            "of small chunks are merged, so a space written 1 record per Produce reads "
            "about as fast as one written 100 per Produce. 0: none is, merging is off.",
        ),
        Option(
            "merge-run-bytes",
            positive_int,
            64 * 1024,
            "A merged run closes once it holds this many bytes of records; a merge step "
            "reads 4 runs' worth of chunks at most.",
        ),
        Option(
            "merge-min-chunks",
            at_least(2),
            16,
            "The fewest small chunks a merged run copies: a shorter run at the end waits "
            "for more. At most --merge-step-chunks.",
        ),
        Option(
            "merge-step-chunks",
            positive_int,
            512,
            "The most chunks one merge step looks at (the event loop's time per step).",
        ),
    ),
)
