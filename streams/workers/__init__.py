"""Serving one store from several processes (``--workers N``).

The writer process owns the storage engine and serves it on a private Unix
socket (:class:`~streams.workers.host.StoreHost`); each front process reaches
it through :class:`~streams.workers.remote.RemoteStore`, a
:class:`~streams.storage.port.Store` whose calls travel as frames
(:mod:`streams.workers.ipc`).
"""
