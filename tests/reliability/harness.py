"""The crash harness's pacing: `Gate` lets it pause every worker thread between
kill -9 cycles. The journal and its checker are tests/support/journal.py."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["Gate"]


class Gate:
    """Workers `enter` before each call and `leave` after; `close` waits for all to leave."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = False
        self._inside = 0
        self.stopping = False

    @contextlib.contextmanager
    def inside(self) -> Iterator[bool]:
        """Yields False when the run is over (the worker should return)."""
        with self._cond:
            while not self._open and not self.stopping:
                self._cond.wait()
            if self.stopping:
                yield False
                return
            self._inside += 1
        try:
            yield True
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def shut(self) -> None:
        """No new entries from now on (calls already inside go on)."""
        with self._cond:
            self._open = False

    def close(self, timeout: float = 30.0) -> None:
        """No new entries; wait until every worker has left."""
        with self._cond:
            self._open = False
            ok = self._cond.wait_for(lambda: self._inside == 0, timeout)
        assert ok, f"{self._inside} worker call(s) still running {timeout} s after the gate closed"

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()
