"""How a storage backend plugs into the server: its name, its own options, and
how it is opened.

A backend module defines ``BACKEND``, a :class:`Backend` listed in
:mod:`streams.storage.registry`. Its options become server options
(``--NAME``, ``STREAMS_NAME``) like every other, shown by ``--help`` under
the backend's name; the server opens the backend chosen by ``--storage``
with a :class:`Setup` holding what every backend gets plus its own options.
The module that implements the backend is imported only then, so that naming
a backend loads nothing heavy (``import streams.server`` loads no engine).

Example (a backend module)::

    BACKEND = Backend(
        "memory",
        "everything in this process's memory, nothing durable",
        "streams.storage.memory:open_store",
    )
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streams.limits import Limits
from streams.memory import MemoryBudget
from streams.storage.port import Store
from streams.storage.watches import MAX_CHANGE_BYTES

# The contract's default dedupe window (--dedupe-window-seconds).
DEFAULT_DEDUPE_WINDOW_NS = 24 * 3600 * 1_000_000_000


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be positive")
    return value


def at_least(least: int) -> Callable[[str], int]:
    """A parser of integers of ``least`` or more (``positive_int``: 1 or more)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: must be {least} or more")
        return value

    return parse


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value}: must be positive")
    return value


class BackendUnavailable(Exception):
    """The backend's module, or a library it needs, cannot be imported here."""


@dataclass(frozen=True, slots=True)
class Option:
    """A server option that a backend owns: ``--NAME``, ``STREAMS_NAME``.
    ``kind`` parses its text (raising ValueError or ArgumentTypeError)."""

    name: str
    kind: Callable[[str], Any]
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True, slots=True)
class Setup:
    """What the server hands the backend it opens: the server-wide settings
    and the backend's own options (by :attr:`Option.dest`)."""

    data: Path
    sync: bool = True
    dedupe_window_ns: int = DEFAULT_DEDUPE_WINDOW_NS
    # Followers are woken at most once per this many seconds (see streams.storage.tail).
    follow_linger: float = 0.0
    # Shared with the service: the backend's caches stay within it.
    memory: MemoryBudget = field(default_factory=MemoryBudget)
    options: Mapping[str, Any] = field(default_factory=dict)
    # Called with each fsync's duration in seconds (metrics), by backends that fsync.
    on_fsync: Callable[[float], None] | None = None
    clock: Callable[[], int] = time.time_ns
    # What a watch of a space's segments remembers before it overflows
    # (--max-watch-change-bytes; see streams.storage.watches).
    watch_change_bytes: int = MAX_CHANGE_BYTES


@dataclass(frozen=True, slots=True)
class Backend:
    """A storage backend as the registry lists it."""

    name: str
    summary: str
    # "module:function": an async function of a Setup that returns the open Store.
    opener: str
    options: tuple[Option, ...] = ()
    # The most records one Produce may hold on this backend (JetStream: one atomic
    # batch); None: the server's --max-records-per-produce alone.
    max_records_per_produce: int | None = None

    def limits(self, configured: Limits) -> Limits:
        """The limits the server enforces on this backend: ``configured``, with
        what this backend cannot take lowered to what it can."""
        cap = self.max_records_per_produce
        if cap is None or cap >= configured.max_records_per_produce:
            return configured
        return replace(configured, max_records_per_produce=cap)

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """This backend's options: those in ``given``, defaults for the rest."""
        return {option.dest: given.get(option.dest, option.default) for option in self.options}

    async def open(self, setup: Setup) -> Store:
        """Opens the backend (its module is imported now: BackendUnavailable if
        it cannot be); ``setup.options`` are completed with the defaults of
        options it does not give."""
        module, function = self.opener.split(":")
        try:
            opener = getattr(importlib.import_module(module), function)
        except ImportError as exc:  # e.g. an engine or client library left out of the install
            raise BackendUnavailable(f"cannot load {module}: {exc}") from exc
        complete = dataclasses.replace(setup, options=self.settings(setup.options))
        store: Store = await opener(complete)
        return store
