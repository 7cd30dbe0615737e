"""A front that stops reading must not grow the writer without bound: its
pumps pause past ``buffer_bytes`` unread (and coalesce what they then read,
losing no record and no wake-up), and the host stops reading its calls.
The front here is a bare socket that the test reads, or does not."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams import codec
from streams.model import Cut, Target
from streams.storage.backend import Setup
from streams.storage.memory import MemoryStore
from streams.workers import ipc
from streams.workers.host import StoreHost
from streams.workers.remote import connect

from .test_remote_connection import served, txn

BUFFER = 64 << 10
RECORD = 20_000


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Waits until ``predicate`` holds (checked as the loop turns), or fails."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def sent_by(link: ipc.Link) -> list[Any]:
    """Every message ``link`` sends from now on (each call and answer is one)."""
    sent: list[Any] = []
    send = link.send

    def counted(message: Any) -> None:
        sent.append(message)
        send(message)

    link.send = counted  # type: ignore[method-assign]
    return sent


def feed(reader: ipc.FrameReader, data: bytes) -> list[Any]:
    """``data`` added to ``reader``, then every message it completed."""
    reader.add(data)
    return list(iter(reader.take, None))


class BareFront:
    """A front that reads only when the test says so."""

    def __init__(self, host: StoreHost) -> None:
        self._host = host
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        self.sock.setblocking(False)
        self._reader = ipc.FrameReader(host.max_frame)
        self._loop = asyncio.get_running_loop()

    async def connect(self) -> None:
        await self._loop.sock_connect(self.sock, str(self._host.path))

    async def send(self, message: object) -> None:
        await self._loop.sock_sendall(self.sock, ipc.encode(message, self._host.max_frame))

    async def receive(self) -> list[Any]:
        while True:
            data = await asyncio.wait_for(self._loop.sock_recv(self.sock, 1 << 20), 10)
            assert data, "the host closed the connection"
            found = feed(self._reader, data)
            if found:
                return found


def test_a_front_that_stops_reading_pauses_its_pumps_and_loses_nothing(tmp_path: Path) -> None:
    transactions = 300

    async def main() -> None:
        async with served(tmp_path, buffer_bytes=BUFFER) as (_, host, (writer,)):
            bare = BareFront(host)
            await bare.connect()
            await bare.send((1, ipc.FOLLOW, (Target("s"),)))
            assert await bare.receive() == [(1, True, 0)]
            (front,) = [f for f in host.fronts if f.streams]
            peak = 0
            for _ in range(transactions):
                await writer.produce(txn("s", "a", 1, size=RECORD))
                peak = max(peak, front.link.buffered)
            await writer.barrier()
            assert not front.link.writable.is_set(), "the pump waits for the front"
            # 6 MB were written: what waits for the front stays within the buffer
            # and one push.
            assert peak <= BUFFER + host.push_cut.max_bytes, peak
            assert front.link.buffered < transactions * RECORD // 10
            pushes: list[Any] = []
            last = 0
            while last < transactions:
                for message in await bare.receive():
                    assert message[:3] == (0, ipc.PUSH, 1)
                    _, _, _, first, framed, count, last = message
                    records = [codec.parse_stored(r) for r in codec.split_framed(framed)]
                    assert [r.position for r in records] == list(range(first, last + 1))
                    assert count == len(records)
                    pushes.append(message)
            assert pushes[0][3] == 1
            assert all(a[6] + 1 == b[3] for a, b in itertools.pairwise(pushes))
            assert len(pushes) < transactions, "records waiting for the front were coalesced"
            bare.sock.close()

    asyncio.run(main())


def test_the_host_stops_reading_calls_of_a_front_that_does_not_read(tmp_path: Path) -> None:
    calls = 200

    async def main() -> None:
        async with served(tmp_path, buffer_bytes=BUFFER, max_calls=4) as (_, host, (writer,)):
            for _ in range(10):
                await writer.produce(txn("s", "a", 1, size=RECORD))
            others = set(host.fronts)
            bare = BareFront(host)
            await bare.connect()
            await eventually(lambda: len(host.fronts) == 2, "the host to serve the bare front")
            (front,) = host.fronts - others
            answers = sent_by(front.link)
            cut = Cut(10, 1 << 20)
            frames = b"".join(
                ipc.encode((n, "read", (Target("s"), 1, 10, cut, b"")), host.max_frame)
                for n in range(1, calls + 1)
            )
            sending = asyncio.ensure_future(
                asyncio.get_running_loop().sock_sendall(bare.sock, frames)
            )
            await eventually(lambda: not front.reading, "the host to stop reading")
            assert len(answers) < calls
            assert front.link.buffered <= BUFFER + host.max_frame // 2
            found: list[Any] = []
            while len(found) < calls:
                found += await bare.receive()
            await sending
            assert [m[0] for m in found] == list(range(1, calls + 1))
            assert all(m[1] and m[2][1] == 10 for m in found)
            bare.sock.close()

    asyncio.run(main())


class _HeldStore(MemoryStore):
    """get_offset waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        await self.release.wait()
        return await super().get_offset(consumer, target)


def test_reading_resumes_once_calls_end_and_the_front_catches_up(tmp_path: Path) -> None:
    """Paused for a call at max_calls, then for a full buffer: once the call
    ends and the front reads again, its next call is read and answered."""

    async def main() -> None:
        store = _HeldStore()
        folder = Path(tempfile.mkdtemp(prefix="remote-"))
        host = StoreHost(store, folder / "s", buffer_bytes=BUFFER, max_calls=1)
        await host.start()
        writer = await connect(host.path, Setup(data=tmp_path))
        bare = BareFront(host)
        try:
            await bare.connect()
            await bare.send((1, ipc.FOLLOW, (Target("s"),)))
            assert await bare.receive() == [(1, True, 0)]
            (front,) = [f for f in host.fronts if f.streams]
            await bare.send((2, "get_offset", ("c", Target("s"))))
            await eventually(lambda: not front.reading, "the call to fill max_calls")
            while front.link.writable.is_set():
                await writer.produce(txn("s", "a", 1, size=RECORD))
            store.release.set()
            await writer.barrier()
            found: list[Any] = []
            while not any(m[0] == 2 for m in found):
                found += await bare.receive()
            while front.link.buffered:
                found += await bare.receive()
            await bare.send((3, "get_offset", ("c", Target("s"))))
            while not any(m[0] == 3 for m in found):
                found += await bare.receive()
        finally:
            bare.sock.close()
            await writer.close()
            await host.close()
            shutil.rmtree(folder, ignore_errors=True)

    asyncio.run(main())
