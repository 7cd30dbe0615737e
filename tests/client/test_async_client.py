"""The asyncio client against an in-process server: the same behaviour as the sync one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from streams import AsyncClient, AsyncConsumer
from streams.client import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    OffsetMismatch,
    OutOfRange,
    SequenceMismatch,
)
from tests.support.inproc import InProcessServer

Body = Callable[[AsyncClient], Awaitable[None]]


def run(inproc: InProcessServer, body: Body) -> None:
    async def main() -> None:
        async with AsyncClient(inproc.target) as client:
            await asyncio.wait_for(body(client), 30)

    asyncio.run(main())


def test_produce_consume_peek_and_errors(inproc: InProcessServer) -> None:
    async def body(client: AsyncClient) -> None:
        ack = await client.produce("s", "a", [b"1", "2"], expected_sequence=0)
        assert (ack.acks[0].last_sequence, ack.last_position) == (2, 2)
        with pytest.raises(SequenceMismatch) as caught:
            await client.produce("s", "a", b"3", expected_sequence=0)
        assert (caught.value.segment, caught.value.actual) == ("a", 2)
        again = await client.produce("s", "a", b"3", transaction_id="t")
        assert (await client.produce("s", "a", b"3", transaction_id="t")).duplicate
        with pytest.raises(AlreadyExists):
            await client.produce("s", "a", b"4", transaction_id="t")
        assert again.acks[0].last_sequence == 3
        txn = client.transaction("s").add("b", b"x").add("a", [b"y"], expected_sequence=3)
        result = await txn.commit()
        assert [(a.segment, a.last_sequence) for a in result.acks] == [("b", 1), ("a", 4)]
        assert [r.payload async for r in client.consume("s", "a", from_offset=3)] == [b"3", b"y"]
        assert [r.position async for r in client.consume("s", limit=2, max_batch=1)] == [1, 2]
        assert (await client.peek("s")).payload == b"y"
        with pytest.raises(NotFound):
            await client.peek("s", "none")
        with pytest.raises(InvalidArgument):
            await client.peek("bad\x7fname")

    run(inproc, body)


def test_follow_offsets_and_lists(inproc: InProcessServer) -> None:
    async def body(client: AsyncClient) -> None:
        async with client.follow("f", "a", limit=2) as stream:
            await stream.ready()
            await client.produce("f", "a", [b"n1", b"n2"])
            assert [r.sequence async for r in stream] == [1, 2]
        with pytest.raises(DeadlineExceeded):
            async for _ in client.follow("f", from_end=True, timeout=0.3):
                pass
        assert await client.get_offset("c", "f", "a") is None
        assert await client.commit("c", "f", "a", offset=1) == 1
        assert await client.get_offset("c", "f", "a") == 1
        with pytest.raises(OffsetMismatch) as caught:
            await client.commit("c", "f", "a", offset=2, expected_offset=0)
        assert caught.value.actual == 1
        with pytest.raises(OutOfRange):
            await client.commit("c", "f", "a", offset=3)
        for name in ["z", "y", "x"]:
            await client.produce(name, "s1", b".")
            await client.produce(name, "s0", b".")
        assert [s.name async for s in client.list_spaces(page_size=2)] == ["f", "x", "y", "z"]
        assert [s.name async for s in client.list_segments("x", page_size=1)] == ["s0", "s1"]

    run(inproc, body)


def test_async_consumer_resumes_after_its_commit(inproc: InProcessServer) -> None:
    async def body(client: AsyncClient) -> None:
        await client.produce("s", "a", [b"1", b"2", b"3", b"4"])
        with pytest.raises(RuntimeError):
            async with AsyncConsumer(client, "c", "s", "a", commit_every=1) as consumer:
                async for record in consumer:
                    if record.sequence == 3:
                        raise RuntimeError("stop")
        assert await client.get_offset("c", "s", "a") == 2
        async with AsyncConsumer(client, "c", "s", "a", commit_interval=0.1) as consumer:
            record = await consumer.__anext__()
            assert record.sequence == 3
            fourth = asyncio.ensure_future(consumer.__anext__())
            assert (await fourth).sequence == 4
            waiting = asyncio.ensure_future(consumer.__anext__())
            # Record 4 counts as processed while the consumer waits: the timer commits it.
            for _ in range(100):
                if await client.get_offset("c", "s", "a") == 4:
                    break
                await asyncio.sleep(0.05)
            assert await client.get_offset("c", "s", "a") == 4
            waiting.cancel()

    run(inproc, body)
