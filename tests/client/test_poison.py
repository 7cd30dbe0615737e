"""A record the application cannot process (a poison record) need not block a
consumer forever: ``Consumer.run(handler, on_error=...)`` stops on it (the
default: it stays uncommitted), skips it with a log line, or hands it to a
callback; the committed offset moves past it only in the last two cases
(issue 11, item 4). Against a real in-process server."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from streams.client import AsyncClient, AsyncConsumer, Client, Consumer, OnError, Record
from tests.support.inproc import InProcessServer

POISON = b"3"


class Poisoned(Exception):
    pass


class Handler:
    """Records what it handled; raises on the poison record; closes the consumer
    once it has seen the last record, so ``run`` returns."""

    def __init__(self, last: int) -> None:
        self.handled: list[bytes] = []
        self.last = last
        self.consumer: Consumer | None = None

    def __call__(self, record: Record) -> None:
        if record.sequence == self.last and self.consumer is not None:
            threading.Thread(target=self.consumer.close).start()
        if record.payload == POISON:
            raise Poisoned(f"cannot process {record.payload!r}")
        self.handled.append(record.payload)


@pytest.fixture
def client(inproc: InProcessServer) -> Iterator[Client]:
    with Client(inproc.target) as client:
        client.produce("orders", "eu", [b"1", b"2", POISON, b"4", b"5"])
        yield client


def run(client: Client, on_error: OnError | Callable[[Record, Exception], object]) -> Handler:
    handler = Handler(last=5)
    consumer = Consumer(client, "billing", "orders", "eu", commit_every=1)
    handler.consumer = consumer
    consumer.run(handler, on_error=on_error)
    consumer.close()
    return handler


def test_stop_is_the_default_and_leaves_the_poison_record_uncommitted(client: Client) -> None:
    with pytest.raises(Poisoned):  # noqa: SIM117 - the raise is the test
        with Consumer(client, "billing", "orders", "eu", commit_every=1) as consumer:
            consumer.run(Handler(last=5))
    assert client.get_offset("billing", "orders", "eu") == 2
    with Consumer(client, "billing", "orders", "eu") as again:
        assert next(again).payload == POISON  # the next run meets it again


def test_skip_logs_the_record_and_commits_past_it(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="streams.client"):
        handler = run(client, OnError.SKIP)
    assert handler.handled == [b"1", b"2", b"4", b"5"]
    assert client.get_offset("billing", "orders", "eu") == 5
    [line] = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert "sequence 3" in line.getMessage() and "Poisoned" in line.getMessage()
    assert line.exc_info is not None  # the traceback is in the log


def test_a_callback_gets_the_record_and_the_error_then_the_consumer_goes_on(
    client: Client,
) -> None:
    parked: list[tuple[bytes, str]] = []

    def park(record: Record, exc: Exception) -> None:
        client.produce("orders-parked", record.segment, record)
        parked.append((record.payload, repr(exc)))

    handler = run(client, park)
    assert handler.handled == [b"1", b"2", b"4", b"5"]
    assert parked == [(POISON, "Poisoned(\"cannot process b'3'\")")]
    assert [r.payload for r in client.consume("orders-parked")] == [POISON]
    assert client.get_offset("billing", "orders", "eu") == 5


def test_a_callback_that_raises_stops_the_consumer(client: Client) -> None:
    def refuse(record: Record, exc: Exception) -> None:
        raise RuntimeError("no dead-letter space today")

    with pytest.raises(RuntimeError, match="dead-letter"):  # noqa: SIM117
        with Consumer(client, "billing", "orders", "eu", commit_every=1) as consumer:
            consumer.run(Handler(last=5), on_error=refuse)
    assert client.get_offset("billing", "orders", "eu") == 2


def test_a_wrong_on_error_is_refused_before_any_record(client: Client) -> None:
    consumer = Consumer(client, "billing", "orders", "eu")
    with pytest.raises(TypeError, match="on_error"):
        consumer.run(Handler(last=5), on_error="skip")  # type: ignore[arg-type]
    consumer.close(processed=False)
    assert client.get_offset("billing", "orders", "eu") is None


def test_the_async_consumer_has_the_same_policies(inproc: InProcessServer) -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], int | None, int | None]:
        async with AsyncClient(inproc.target) as client:
            await client.produce("orders", "eu", [b"1", b"2", POISON, b"4", b"5"])
            handled: list[bytes] = []
            parked: list[bytes] = []

            async def handle(record: Record) -> None:
                if record.payload == POISON:
                    raise Poisoned("cannot process")
                handled.append(record.payload)
                if record.sequence == 5:
                    await consumer.close()

            async def park(record: Record, exc: Exception) -> None:
                parked.append(record.payload)

            consumer = AsyncConsumer(client, "billing", "orders", "eu", commit_every=1)
            with pytest.raises(Poisoned):
                await consumer.run(handle)
            await consumer.close(processed=False)
            stopped_at = await client.get_offset("billing", "orders", "eu")
            consumer = AsyncConsumer(client, "billing", "orders", "eu", commit_every=1)
            await consumer.run(handle, on_error=park)
            return handled, parked, stopped_at, await client.get_offset("billing", "orders", "eu")

    handled, parked, stopped_at, committed = asyncio.run(asyncio.wait_for(scenario(), 15))
    assert stopped_at == 2 and handled == [b"1", b"2", b"4", b"5"]
    assert parked == [POISON] and committed == 5
