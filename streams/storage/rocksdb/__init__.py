"""The RocksDB engine (``--storage rocksdb``, the default): one process, one
embedded database (through rocksdict), records fsynced before they are acked.

Split by job: :mod:`.layout` (keys, value formats, the on-disk format
version), :mod:`.chunks` (how records are packed into values),
:mod:`.store` (the store and its opener), :mod:`.group_commit` (one fsync
acks many writes) and :mod:`.recovery` (opening after a crash or a full disk).

Only the backend's description is defined here, so that the registry can
name this engine without loading rocksdict.
"""

from streams.storage.backend import Backend, Option, positive_float, positive_int

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
            "dedupe-sweep-seconds",
            positive_float,
            60.0,
            "How often expired dedupe entries are deleted.",
        ),
    ),
)
