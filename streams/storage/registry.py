"""The storage backends a server can run on, by name (``--storage NAME``).

A new backend is a module defining ``BACKEND`` (a
:class:`~streams.storage.backend.Backend`) added to :data:`MODULES`; it
passes the port conformance suite (tests/storage/) before it is listed.
"""

from __future__ import annotations

import importlib

from streams.storage.backend import Backend

DEFAULT = "rocksdb"
MODULES = ("streams.storage.rocksdb", "streams.storage.memory", "streams.storage.jetstream")


def backends() -> dict[str, Backend]:
    """Every backend by name; their options' names are all different."""
    found: dict[str, Backend] = {}
    options: dict[str, str] = {}
    for module in MODULES:
        backend: Backend = importlib.import_module(module).BACKEND
        if backend.name in found:
            raise ValueError(f"two storage backends are named {backend.name!r}")
        found[backend.name] = backend
        for option in backend.options:
            if option.name in options:
                raise ValueError(
                    f"--{option.name} is an option of both {options[option.name]} and "
                    f"{backend.name}"
                )
            options[option.name] = backend.name
    return found


def get(name: str) -> Backend:
    """The backend named ``name``; ValueError naming the known ones if none is."""
    known = backends()
    if name not in known:
        raise ValueError(f"no storage backend {name!r}; known: {', '.join(sorted(known))}")
    return known[name]
