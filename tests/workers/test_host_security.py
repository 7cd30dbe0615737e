"""The store host treats its socket as hostile (review16 F1): a frame naming a
callable outside the model and errors runs nothing and drops the connection;
a peer that ``allow_peer`` refuses (or of another uid) is dropped before any
frame is read; a message of the wrong shape is dropped before dispatch. Other
fronts are served throughout."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
from pathlib import Path

import pytest

from streams.errors import Unavailable
from streams.model import Target
from streams.storage.backend import Setup
from streams.workers import ipc
from streams.workers.remote import connect

from .test_remote_connection import served, txn


class _Mkdir:
    """Pickles as a call of os.mkdir: what a hostile peer would send."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.path),)


async def _send_raw(path: Path, payload: bytes) -> bytes:
    """Sends one frame of ``payload`` on a fresh connection; what comes back
    before the host closes it (b"": closed without an answer)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as raw:
        raw.setblocking(False)
        await loop.sock_connect(raw, str(path))
        await loop.sock_sendall(raw, ipc.HEADER.pack(len(payload)) + payload)
        return await asyncio.wait_for(loop.sock_recv(raw, 1 << 16), 10)


def test_a_frame_naming_another_callable_runs_nothing_and_is_dropped(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    async def main() -> None:
        async with served(tmp_path) as (_, host, (store,)):
            for message in (_Mkdir(marker), (1, "get_space", (_Mkdir(marker),))):
                assert await _send_raw(host.path, pickle.dumps(message, 5)) == b""
            assert not marker.exists()
            await store.produce(txn("s", "a"))
            assert await store.last_offset(Target("s")) == 1
            assert len(host.fronts) == 1

    asyncio.run(main())


def test_the_unpickler_resolves_only_model_and_error_classes() -> None:
    for value in (os.system, print, Path("x"), ValueError("x")):
        with pytest.raises(pickle.UnpicklingError, match="may not travel"):
            ipc.loads(pickle.dumps(value, 5))
    # An error that cannot travel reaches the front as an InvariantViolation.
    assert "cannot travel" in str(ipc.sendable_error(ValueError("boom")))


@pytest.mark.parametrize(
    "message",
    [
        ("get_space", ("s",)),  # not (id, name, args)
        (1, "get_space", ("s",), 4),
        ("1", "get_space", ("s",)),  # the id is not an int
        (-1, "get_space", ("s",)),
        (True, "get_space", ("s",)),
        (1, "__init__", ()),  # no such call
        (1, "close", ()),  # a store method no front may call
        (1, "get_space", ()),  # too few arguments
        (1, "get_space", ("s", "t")),  # too many
        (1, "get_space", ["s"]),  # args not a tuple
        (0, "unfollow", ("1",)),
    ],
)
def test_a_message_of_the_wrong_shape_is_dropped_before_dispatch(
    tmp_path: Path, message: object
) -> None:
    async def main() -> None:
        async with served(tmp_path) as (_, host, (store,)):
            # A dispatched call is answered, with an error frame if it fails,
            # before anything drops the connection (UNFOLLOW aside: it has no
            # answer, and "1" names no stream): b"" is nothing dispatched.
            assert await _send_raw(host.path, pickle.dumps(message, 5)) == b""
            assert await store.get_space("s") is None  # the other front is served

    asyncio.run(main())


def test_a_peer_allow_peer_refuses_is_dropped_before_any_frame(tmp_path: Path) -> None:
    asked: list[int] = []

    def allow(pid: int) -> bool:
        asked.append(pid)
        return len(asked) == 1  # the first front only

    async def main() -> None:
        async with served(tmp_path, allow_peer=allow) as (_, host, (store,)):
            with pytest.raises(Unavailable, match=r"broke|gone"):
                await connect(host.path, Setup(data=tmp_path))
            assert asked == [os.getpid(), os.getpid()]
            assert len(host.fronts) == 1
            await store.produce(txn("s", "a"))

    asyncio.run(main())


NOBODY = 65534
# A child of uid nobody connects (the socket opened to it for the test) and
# sends a HELLO: "answered" if the host answers, "dropped" if it closes.
_OTHER_UID = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    print("answered" if s.recv(1 << 16) else "dropped")
except OSError:
    print("dropped")
"""


@pytest.mark.skipif(os.getuid() != 0 or not Path("/usr/bin/python3").exists(), reason="root only")
def test_a_peer_of_another_uid_is_dropped_before_any_frame(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (_, host, _stores):
            os.chmod(host.path.parent, 0o755)
            os.chmod(host.path, 0o666)
            hello = ipc.encode((1, ipc.HELLO, (host.max_frame,)), host.max_frame)
            child = await asyncio.create_subprocess_exec(
                "/usr/bin/python3",
                "-c",
                _OTHER_UID,
                str(host.path),
                hello.hex(),
                user=NOBODY,
                stdout=asyncio.subprocess.PIPE,
                cwd="/",
            )
            out, _ = await asyncio.wait_for(child.communicate(), 30)
            assert out.strip() == b"dropped"
            assert len(host.fronts) == 1

    asyncio.run(main())


@pytest.mark.parametrize(
    "message",
    [(5,), (1, "yes", None), (1, False, "not an error"), (0, "push", 1), (0, ["x"], 1)],
)
def test_a_front_drops_a_host_message_of_the_wrong_shape(tmp_path: Path, message: object) -> None:
    async def main() -> None:
        async def host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)  # the HELLO
            writer.write(ipc.encode(message, 1 << 20))
            await writer.drain()
            await reader.read()  # until the front drops the connection

        server = await asyncio.start_unix_server(host, str(tmp_path / "h.sock"))
        async with server:
            with pytest.raises(Unavailable, match="broke"):
                await connect(tmp_path / "h.sock", Setup(data=tmp_path))

    asyncio.run(main())
