"""The asyncio client's pipeline (``AsyncClient.pipeline``): the same behaviour
as the blocking one (test_pipeline.py), awaited, plus asyncio cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from streams.client import (
    AsyncClient,
    AsyncPipeline,
    Cancelled,
    DeadlineExceeded,
    PipelineClosed,
    SequenceMismatch,
)
from tests.support.inproc import InProcessServer

from .fault_proxy import FaultProxy, Forward
from .test_pipeline import Gate

T = TypeVar("T")


@pytest.fixture
def proxy(inproc: InProcessServer) -> Iterator[FaultProxy]:
    faults = FaultProxy(inproc.target)
    yield faults
    faults.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def until(predicate: Any, what: str) -> None:
    """Waits (on the loop) for something a proxy thread or the server does."""
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


async def payloads(client: AsyncClient, space: str) -> list[bytes]:
    return [record.payload async for record in client.consume(space)]


def test_handles_resolve_in_send_order(proxy: FaultProxy) -> None:
    gate = Gate(hold="first")
    proxy.hooks["Produce"] = gate

    async def scenario() -> list[int]:
        resolved: list[int] = []
        async with AsyncClient(proxy.target) as client, client.pipeline() as pipeline:
            handles = [await pipeline.produce("s", "a", f"{i}".encode()) for i in range(6)]
            for i, handle in enumerate(handles):
                handle.add_done_callback(lambda _, i=i: resolved.append(i))
            await until(lambda: len(pipeline._window.unended()) == 1, "5 calls ended")
            await asyncio.sleep(0)  # done callbacks run on the next loop turn
            assert resolved == list(range(len(resolved))) and len(resolved) < 6
            gate.open.set()
            results = await asyncio.gather(*handles)
            assert sorted(r.first_position for r in results) == list(range(1, 7))
        return resolved

    assert run(scenario()) == list(range(6))


def test_produce_waits_while_the_window_is_full(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate

    async def scenario() -> None:
        async with AsyncClient(proxy.target) as client:
            pipeline = client.pipeline(max_in_flight=3)
            for i in range(3):
                await pipeline.produce("s", "a", f"{i}".encode())
            fourth = asyncio.create_task(pipeline.produce("s", "a", b"3"))
            await until(lambda: gate.arrived == 3, "3 calls at the proxy")
            for _ in range(5):
                await asyncio.sleep(0)
            assert not fourth.done() and pipeline.in_flight == 3
            gate.open.set()
            handle = await fourth
            await pipeline.close()
            assert (await handle).transaction_id == handle.transaction_id
            assert len(await payloads(client, "s")) == 4 and gate.peak <= 3

    run(scenario())


def test_cancelling_a_produce_waiting_for_room_sends_nothing(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate

    async def scenario() -> None:
        async with AsyncClient(proxy.target) as client:
            pipeline = client.pipeline(max_in_flight=1)
            held = await pipeline.produce("s", "a", b"held")
            waiting = asyncio.create_task(pipeline.produce("s", "a", b"never"))
            await until(lambda: gate.arrived == 1, "the first call at the proxy")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            gate.open.set()
            await pipeline.close()
            assert not (await held).duplicate
            assert await payloads(client, "s") == [b"held"] and gate.arrived == 1

    run(scenario())


def test_cancelling_a_handle_leaves_the_others(inproc: InProcessServer) -> None:
    async def scenario() -> None:
        async with AsyncClient(inproc.target) as client:
            async with client.pipeline() as pipeline:
                handles = [await pipeline.produce("s", "a", f"{i}".encode()) for i in range(4)]
                handles[1].cancel()  # stops waiting on it; the transaction still goes
            assert handles[1].cancelled()
            assert [(await h).first_position > 0 for h in (handles[0], *handles[2:])]
            assert len(await payloads(client, "s")) == 4

    run(scenario())


def test_an_error_fails_its_own_handle_and_the_next_flush(inproc: InProcessServer) -> None:
    async def scenario() -> None:
        async with AsyncClient(inproc.target) as client:
            pipeline = client.pipeline()
            ok = await pipeline.produce("s", "a", b"1")
            wrong = await pipeline.produce("s", "b", b"2", expected_sequence=3)
            later = await pipeline.transaction("s").add("c", b"3").add("d", b"4").commit()
            with pytest.raises(SequenceMismatch) as caught:
                await pipeline.flush()
            assert caught.value.segment == "b" and wrong.exception() is caught.value
            assert not (await ok).duplicate and len((await later).acks) == 2
            await pipeline.close()  # reported once
            assert sorted(await payloads(client, "s")) == [b"1", b"3", b"4"]

    run(scenario())


def test_an_unknown_outcome_is_retried_under_its_transaction_id(proxy: FaultProxy) -> None:
    used = threading.Event()

    def fail_first_after_writing(forward: Forward, context: grpc.ServicerContext) -> bytes:
        answer = forward()
        if not used.is_set():
            used.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected after the write")
        return answer

    proxy.hooks["Produce"] = fail_first_after_writing

    async def scenario() -> None:
        async with AsyncClient(proxy.target) as client:
            async with client.pipeline() as pipeline:
                handles = [await pipeline.produce("s", "a", f"{i}".encode()) for i in range(4)]
            results = [await handle for handle in handles]
            assert sum(r.duplicate for r in results) == 1
            assert sorted(await payloads(client, "s")) == [b"0", b"1", b"2", b"3"]

    run(scenario())
    assert proxy.calls["Produce"] == 5


def test_flush_timeout_then_close_and_refuse(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate

    async def scenario() -> None:
        async with AsyncClient(proxy.target) as client:
            pipeline = client.pipeline()
            handle = await pipeline.produce("s", "a", b"x")
            await until(lambda: gate.arrived == 1, "the call at the proxy")
            with pytest.raises(DeadlineExceeded):
                await pipeline.flush(timeout=0.05)
            assert not handle.done()
            gate.open.set()
            await pipeline.close()
            assert handle.done()
            with pytest.raises(PipelineClosed):
                await pipeline.produce("s", "a", b"late")

    run(scenario())


def test_an_exception_in_the_block_cancels_the_transactions_in_flight(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate

    async def scenario() -> None:
        async with AsyncClient(proxy.target) as client:
            pipeline: AsyncPipeline | None = None
            with pytest.raises(KeyError):
                async with client.pipeline() as pipeline:
                    handles = [await pipeline.produce("s", "a", b"x") for _ in range(3)]
                    await until(lambda: gate.arrived == 3, "3 calls at the proxy")
                    raise KeyError("the application failed")
            assert pipeline is not None and pipeline.in_flight == 0
            for handle in handles:
                error = handle.exception()
                assert isinstance(error, Cancelled) and handle.transaction_id in str(error)
        gate.open.set()

    run(scenario())
