"""Storage: the backends behind the service.

:mod:`streams.storage.port` is the interface (and the rules) every backend
implements; :mod:`streams.storage.registry` lists the backends by name
(``--storage``): :mod:`streams.storage.rocksdb`, the durable embedded engine,
and :mod:`streams.storage.memory`, the reference backend.
"""
