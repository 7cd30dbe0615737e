"""Storage: the engine behind the service.

:class:`~streams.storage.base.Store` is the narrow interface every backend
implements; :class:`~streams.storage.rocksdb.RocksStore` is the embedded one.
"""

from streams.storage.base import Store
from streams.storage.rocksdb import RocksStore, StoreOptions

__all__ = ["RocksStore", "Store", "StoreOptions"]
