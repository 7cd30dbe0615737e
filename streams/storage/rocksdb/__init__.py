"""The RocksDB engine: one process, one embedded database (through rocksdict).

Split by job: :mod:`.layout` (keys, value formats, the on-disk format
version), :mod:`.chunks` (how records are packed into values),
:mod:`.store` (the store), :mod:`.group_commit` (one fsync acks many writes)
and :mod:`.recovery` (opening after a crash or a full disk).

Nothing is imported here, so that the registry can name this engine without
loading rocksdict.
"""
