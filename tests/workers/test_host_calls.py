"""How the store host runs calls: on Python 3.12+ each call runs in a Task, so
store methods may use ``asyncio.timeout`` (and ``asyncio.wait_for``, which is
built on it since 3.12: the jetstream backend uses it; review16 F3); a
barrier answers only once every removal the store completed before it has
reached the front (a DeleteSpace run by the writer itself; review16 F5)."""

from __future__ import annotations

import asyncio
import os
import site
import subprocess
import textwrap
from pathlib import Path

import pytest

from streams.model import Target

from .test_remote_connection import ALL, ROOT, served, txn

# A host over a store whose get_space awaits under asyncio.timeout and
# asyncio.wait_for, with the first step run from the socket's callback.
_TIMEOUT_STORE = textwrap.dedent(
    """
    import asyncio, sys, tempfile
    from pathlib import Path
    from streams.storage.backend import Setup
    from streams.workers.host import StoreHost
    from streams.workers.remote import connect

    class TimedStore:
        write_error = None

        async def get_space(self, space):
            async with asyncio.timeout(5):
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.sleep(0), 5)
            return None

    async def main():
        folder = Path(tempfile.mkdtemp())
        host = StoreHost(TimedStore(), folder / "h.sock")
        await host.start()
        store = await connect(host.path, Setup(data=folder))
        try:
            print("answered", await store.get_space("s"))
        except Exception as exc:
            print("failed", repr(exc))
        await store.close()
        await host.close()

    asyncio.run(main())
    """
)
_NEWER = [
    path
    for version in ("3.12", "3.13")
    for path in sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python"))
]


@pytest.mark.skipif(not _NEWER, reason="no Python 3.12+ interpreter on this machine")
@pytest.mark.parametrize("python", _NEWER, ids=lambda path: path.parts[-3])
def test_a_store_method_using_asyncio_timeout_is_served_on_newer_pythons(python: Path) -> None:
    # The venv's packages are pure Python where it matters (protobuf's Python
    # implementation); grpc and RocksDB are not imported by the host.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()]),
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
    }
    done = subprocess.run(
        [str(python), "-c", _TIMEOUT_STORE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "answered None", done.stdout + done.stderr


class _SlowSentinelStore:
    """The RocksDB store, but its watches report changes only once ``heard``
    is set: the host's sentinel lags as far behind a removal as it may."""

    def __init__(self, engine: object) -> None:
        self._engine = engine
        self.heard = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def watch(self, space: str) -> object:
        return _LateWatches(self._engine.watch(space), self.heard)  # type: ignore[attr-defined]


class _LateWatches:
    def __init__(self, inner: object, heard: asyncio.Event) -> None:
        self._inner, self._heard = inner, heard

    async def __aenter__(self) -> object:
        return _LateWatch(await self._inner.__aenter__(), self._heard)  # type: ignore[attr-defined]

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)  # type: ignore[attr-defined]


class _LateWatch:
    def __init__(self, inner: object, heard: asyncio.Event) -> None:
        self._inner, self._heard = inner, heard

    async def changes(self) -> object:
        names = await self._inner.changes()  # type: ignore[attr-defined]
        await self._heard.wait()
        return names


def test_barrier_after_a_writer_side_delete_space_sees_the_removal(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (engine, host, (store,)):
            slow = _SlowSentinelStore(engine)
            host.store = slow  # type: ignore[assignment]
            target = Target("s")
            async with store.follow(target) as sub:
                await store.produce(txn("s", "a", 3))
                await asyncio.wait_for(sub.wait(3), 10)
                batch, _ = await store.read(target, 1, 3, ALL)
                assert batch.count == 3  # from the front's window
                await engine.delete_space("s")  # the writer, not through the host
                await store.barrier()
                batch, _ = await store.read(target, 1, 3, ALL)
                assert batch.count == 0
                slow.heard.set()

    asyncio.run(main())
