"""A Produce whose outcome is unknown is sent again under its transaction id:
after UNAVAILABLE, DEADLINE_EXCEEDED, a CANCELLED the caller did not ask for,
UNKNOWN, or an INTERNAL that gRPC made on the client's side for a broken answer.
The server's dedupe answers the repeat as a duplicate, so nothing is written
twice. An INTERNAL the server itself sends is not retried, nor a call cancelled
by closing the client.

The faults come from a real gRPC proxy in front of a real server: it forwards
the Produce (so the server writes it), then answers the client with the fault.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

from streams.client import AsyncClient, Cancelled, Client, StreamsError
from tests.support.inproc import InProcessServer

from .fault_proxy import FaultProxy, Forward, Hook

OUTCOME_UNKNOWN = [
    grpc.StatusCode.CANCELLED,  # what a draining server's gRPC sent (issue 11, item 2)
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
]


@pytest.fixture
def proxy(inproc: InProcessServer) -> Iterator[FaultProxy]:
    faults = FaultProxy(inproc.target)
    yield faults
    faults.close()


def after_forwarding(code: grpc.StatusCode) -> Hook:
    """A Produce hook: the first call reaches the server, then fails with ``code``."""
    used = threading.Event()

    def hook(forward: Forward, context: grpc.ServicerContext) -> bytes:
        answer = forward()
        if not used.is_set():
            used.set()
            context.abort(code, f"injected by the test proxy after the write: {code.name}")
        return answer

    return hook


def stored(client: Client, space: str) -> list[bytes]:
    return [r.payload for r in client.consume(space)]


@pytest.mark.parametrize("code", OUTCOME_UNKNOWN, ids=lambda c: c.name)
def test_produce_is_sent_again_when_its_outcome_is_unknown(
    proxy: FaultProxy, code: grpc.StatusCode
) -> None:
    proxy.hooks["Produce"] = after_forwarding(code)
    with Client(proxy.target) as client:  # default settings
        ack = client.produce("s", "a", [b"x", b"y"])
        assert ack.duplicate, "the first attempt wrote; the repeat must be answered from the dedupe"
        assert (ack.first_position, ack.last_position) == (1, 2)
        assert proxy.calls["Produce"] == 2
        assert stored(client, "s") == [b"x", b"y"]


@pytest.mark.parametrize("code", OUTCOME_UNKNOWN, ids=lambda c: c.name)
def test_async_produce_is_sent_again_when_its_outcome_is_unknown(
    proxy: FaultProxy, code: grpc.StatusCode
) -> None:
    proxy.hooks["Produce"] = after_forwarding(code)

    async def scenario() -> tuple[bool, list[bytes]]:
        async with AsyncClient(proxy.target) as client:
            txn = client.transaction("s").add("a", b"x").add("b", b"y")
            ack = await txn.commit()
            return ack.duplicate, [r.payload async for r in client.consume("s")]

    duplicate, payloads = asyncio.run(asyncio.wait_for(scenario(), 15))
    assert duplicate and payloads == [b"x", b"y"]
    assert proxy.calls["Produce"] == 2


def garble_once() -> Hook:
    """A Produce hook: the first call reaches the server, and its answer reaches
    the client as bytes that do not parse."""
    used = threading.Event()

    def hook(forward: Forward, context: grpc.ServicerContext) -> bytes:
        answer = forward()
        if used.is_set():
            return answer
        used.set()
        return b"\xff\xff\xff"

    return hook


def test_an_answer_that_breaks_on_the_way_is_an_unknown_outcome(proxy: FaultProxy) -> None:
    # gRPC's Python layer makes INTERNAL "Exception deserializing response!" on
    # the client's side, after the server wrote.
    proxy.hooks["Produce"] = garble_once()
    with Client(proxy.target) as client:
        ack = client.produce("s", "a", b"x")
        assert ack.duplicate and proxy.calls["Produce"] == 2
        assert stored(client, "s") == [b"x"]


def test_an_async_answer_that_breaks_on_the_way_is_an_unknown_outcome(proxy: FaultProxy) -> None:
    # grpc.aio logs such an answer and hands over None instead of raising.
    proxy.hooks["Produce"] = garble_once()

    async def scenario() -> bool:
        async with AsyncClient(proxy.target) as client:
            return (await client.produce("s", "a", b"x")).duplicate

    assert asyncio.run(asyncio.wait_for(scenario(), 15))
    assert proxy.calls["Produce"] == 2


def test_an_internal_error_the_server_sends_is_not_retried(proxy: FaultProxy) -> None:
    def fail(forward: Forward, context: grpc.ServicerContext) -> bytes:
        message = "Produce: internal error; the server log has details"  # the server's words
        context.abort(grpc.StatusCode.INTERNAL, message)

    proxy.hooks["Produce"] = fail
    with Client(proxy.target) as client:
        with pytest.raises(StreamsError) as caught:
            client.produce("s", "a", b"x")
        assert caught.value.code is grpc.StatusCode.INTERNAL
        assert "internal error" in str(caught.value)
        assert proxy.calls["Produce"] == 1


def test_a_produce_cancelled_by_closing_the_client_is_not_retried(proxy: FaultProxy) -> None:
    arrived, release = threading.Event(), threading.Event()

    def stall(forward: Forward, context: grpc.ServicerContext) -> bytes:
        arrived.set()
        release.wait(10)
        return forward()

    proxy.hooks["Produce"] = stall
    client = Client(proxy.target)
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            client.produce("s", "a", b"x")
        except BaseException as exc:
            outcome.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert arrived.wait(10)
        client.close()
        producer.join(5)
        assert not producer.is_alive(), "a call cancelled by close() must not be retried"
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
        assert proxy.calls["Produce"] == 1
    finally:
        release.set()
        producer.join(10)
