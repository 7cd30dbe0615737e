"""Background work that stays visible: each failure is logged with its
traceback and counted, then retried after a growing pause; stopping never
raises what the work raised.

Example::

    supervisor = Supervisor(on_failure=lambda name: failures.labels(name).inc())
    supervisor.every("dedupe-sweep", 60.0, sweep)   # sweep() runs now, then every 60 s
    ...
    await supervisor.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("streams.supervisor")


class Supervisor:
    """Runs named periodic steps on the event loop and keeps them running.

    A step that raises is retried after ``initial_backoff`` seconds, doubling
    up to ``max_backoff`` while it keeps failing; the first success logs the
    recovery and goes back to the interval.
    """

    def __init__(
        self,
        on_failure: Callable[[str], None] | None = None,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if not 0 < initial_backoff <= max_backoff:
            raise ValueError(f"backoff: need 0 < {initial_backoff} <= {max_backoff}")
        self._on_failure = on_failure
        self._initial = initial_backoff
        self._max = max_backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def every(self, name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        """Runs ``step`` now, then ``interval`` seconds after each success."""
        if name in self._tasks:
            raise ValueError(f"{name}: already running")
        if interval <= 0:
            raise ValueError(f"{name}: the interval must be positive, got {interval}")
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._run(name, interval, step), name=f"streams:{name}"
        )

    @property
    def running(self) -> list[str]:
        """Names of the steps still scheduled (all of them until stop())."""
        return [name for name, task in self._tasks.items() if not task.done()]

    async def _run(self, name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        backoff = self._initial
        failures = 0
        while True:
            try:
                await step()
            except Exception:
                failures += 1
                log.exception(
                    "%s failed (%d in a row); retrying in %.1fs",
                    name, failures, backoff,
                    extra={"task": name, "failures": failures},
                )  # fmt: skip
                if self._on_failure is not None:
                    self._on_failure(name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max)
                continue
            if failures:
                log.warning("%s recovered after %d failures", name, failures, extra={"task": name})
                failures, backoff = 0, self._initial
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Cancels every step and waits for it to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
