"""A follower that reconnects before its first record resumes from the start the
server fixed (``streams-start`` in Consume's initial metadata, contract section
"Consume: start offset and segment filter"), not from a new ``from_end``: the
records committed while it was away are not skipped (issue 11, item 3).

A real gRPC proxy in front of a real server breaks the stream and holds the
reconnect while records commit. The proxy can add the header itself, as the
contract says the server sends it, to test the client alone; the last test
needs the server's own header.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from streams.client import AsyncClient, Client
from tests.support.inproc import InProcessServer

from .fault_proxy import FaultProxy


@pytest.fixture
def proxy(inproc: InProcessServer) -> Iterator[FaultProxy]:
    faults = FaultProxy(inproc.target)
    yield faults
    faults.close()


def break_before_the_first_record(proxy: FaultProxy, direct: Client) -> threading.Thread:
    """Breaks the open follow and commits 4 and 5 while its reconnect is held; then
    lets it in, and commits 6 once it is in: a follower that resumed from its
    announced start reads 4, 5, 6; one that asked for the end again reads 6 only."""
    proxy.consume_gate.clear()
    proxy.break_streams()
    direct.produce("s", "a", [b"4", b"5"])
    proxy.consume_gate.set()

    def after_the_reconnect() -> None:
        proxy.wait_opened(2)
        direct.produce("s", "a", b"6")

    writer = threading.Thread(target=after_the_reconnect)
    writer.start()
    return writer


def follow_from_end_across_a_break(proxy: FaultProxy, direct: Client) -> list[bytes]:
    direct.produce("s", "a", [b"1", b"2", b"3"])
    with Client(proxy.target) as client, client.follow("s", from_end=True, to_offset=6) as stream:
        stream.ready()  # the start is fixed: 4
        writer = break_before_the_first_record(proxy, direct)
        got = [record.payload for record in stream]
        writer.join(10)
    assert proxy.opened == 2, "the follow reconnected once"
    return got


def test_a_follower_resumes_from_the_announced_start(
    proxy: FaultProxy, inproc: InProcessServer
) -> None:
    proxy.start_header = "4"  # what the contract has the server send here
    with Client(inproc.target) as direct:
        assert follow_from_end_across_a_break(proxy, direct) == [b"4", b"5", b"6"]


def test_an_async_follower_resumes_from_the_announced_start(
    proxy: FaultProxy, inproc: InProcessServer
) -> None:
    proxy.start_header = "4"

    async def scenario(direct: Client) -> list[bytes]:
        direct.produce("s", "a", [b"1", b"2", b"3"])
        async with AsyncClient(proxy.target) as client:
            stream = client.follow("s", "a", from_end=True, to_offset=6)
            await stream.ready()
            writer = await asyncio.to_thread(break_before_the_first_record, proxy, direct)
            got = [record.payload async for record in stream]
            await asyncio.to_thread(writer.join, 10)
            return got

    with Client(inproc.target) as direct:
        assert asyncio.run(asyncio.wait_for(scenario(direct), 15)) == [b"4", b"5", b"6"]


def test_a_follower_without_the_header_starts_as_it_asked(
    proxy: FaultProxy, inproc: InProcessServer
) -> None:
    # A server that sends no streams-start (older than the contract's addition):
    # the client repeats its request, as before; nothing breaks.
    with Client(inproc.target) as direct:
        direct.produce("s", "a", [b"1"])
        with Client(proxy.target) as client, client.follow("s", from_offset=1) as stream:
            assert next(stream).payload == b"1"
            proxy.break_streams()
            direct.produce("s", "a", [b"2"])
            assert next(stream).payload == b"2"


def test_the_server_announces_the_start_and_the_follower_resumes_from_it(
    proxy: FaultProxy, inproc: InProcessServer
) -> None:
    with Client(inproc.target) as direct:
        assert follow_from_end_across_a_break(proxy, direct) == [b"4", b"5", b"6"]
