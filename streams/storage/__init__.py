"""Storage: the engine behind the service.

:class:`~streams.storage.base.Store` is the narrow interface every backend
implements; :class:`~streams.storage.rocksdb.store.RocksStore` is the embedded one.
"""
