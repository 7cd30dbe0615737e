"""The blocking client's pipeline (``Client.pipeline``): many transactions in
flight from one producer, handles resolved in send order, a bounded window,
errors and retries per transaction, flush, close and cancel.

Real servers: an in-process server, and for faults the test gRPC proxy of
fault_proxy.py in front of it (it holds or fails chosen calls)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from streams.client import (
    Cancelled,
    Client,
    DeadlineExceeded,
    PipelineClosed,
    ProduceFuture,
    ProduceResult,
    RetryPolicy,
    SequenceMismatch,
    Unavailable,
)
from tests.support.inproc import InProcessServer
from tests.support.waiting import wait_until

from .fault_proxy import FaultProxy, Forward


@pytest.fixture
def proxy(inproc: InProcessServer) -> Iterator[FaultProxy]:
    faults = FaultProxy(inproc.target)
    yield faults
    faults.close()


class Gate:
    """A Produce hook that holds calls at the proxy until the test opens the gate:
    ``hold="before"`` holds them before they reach the server, ``"first"`` holds
    only the first call to arrive, after the server wrote it. It counts the
    calls held at once (``peak``)."""

    def __init__(self, hold: str = "before") -> None:
        self.hold = hold
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.arrived = 0
        self.active = 0
        self.peak = 0
        self.answered = 0  # calls answered without being held

    def __call__(self, forward: Forward, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.arrived += 1
            first = self.arrived == 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if self.hold == "before":
                if not self.open.wait(20):
                    context.abort(grpc.StatusCode.ABORTED, "the test never opened the gate")
                return forward()
            answer = forward()
            if first:
                self.open.wait(20)
            else:
                with self.lock:
                    self.answered += 1
            return answer
        finally:
            with self.lock:
                self.active -= 1


def payloads(client: Client, space: str) -> list[bytes]:
    return [record.payload for record in client.consume(space)]


def test_handles_resolve_in_send_order_while_an_earlier_ack_is_late(
    proxy: FaultProxy,
) -> None:
    gate = Gate(hold="first")
    proxy.hooks["Produce"] = gate
    resolved: list[int] = []
    with Client(proxy.target) as client, client.pipeline(max_in_flight=8) as pipeline:
        handles = [pipeline.produce("s", "a", f"{i}".encode()) for i in range(6)]
        for i, handle in enumerate(handles):
            handle.add_done_callback(lambda _, i=i: resolved.append(i))
        # Every call but the held one came back from the server.
        wait_until(lambda: gate.answered == 5, what="the other 5 answers")
        wait_until(lambda: len(pipeline._window.unended()) == 1, what="5 calls ended")
        assert resolved == [] or resolved == list(range(len(resolved)))
        assert not all(handle.done() for handle in handles)
        gate.open.set()
    assert resolved == list(range(6))
    results = [handle.result() for handle in handles]
    assert all(isinstance(r, ProduceResult) and not r.duplicate for r in results)
    # Each record written once, whatever order the server took them in.
    assert sorted(r.first_position for r in results) == list(range(1, 7))
    with Client(proxy.target) as client:
        assert sorted(payloads(client, "s")) == [f"{i}".encode() for i in range(6)]


def test_the_window_bounds_transactions_in_flight(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate
    seen_in_flight: list[int] = []
    with Client(proxy.target) as client:
        pipeline = client.pipeline(max_in_flight=3)

        def produce() -> None:
            for i in range(8):
                pipeline.produce("s", "a", f"{i}".encode())
                seen_in_flight.append(pipeline.in_flight)

        producer = threading.Thread(target=produce)
        producer.start()
        wait_until(lambda: gate.arrived == 3, what="3 calls at the proxy")
        assert len(seen_in_flight) <= 3, "a 4th produce returned while 3 were held"
        gate.open.set()
        producer.join(20)
        pipeline.close()
        assert max(seen_in_flight) == 3 and gate.peak <= 3
        assert payloads(client, "s") and len(payloads(client, "s")) == 8


def test_the_window_bounds_bytes_in_flight(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate
    record = b"x" * 1000
    with Client(proxy.target) as client:
        pipeline = client.pipeline(max_in_flight=100, max_bytes=2500)
        pipeline.produce("s", "a", record)
        pipeline.produce("s", "a", record)
        third = threading.Thread(target=pipeline.produce, args=("s", "a", record))
        third.start()
        wait_until(lambda: gate.arrived == 2, what="2 calls at the proxy")
        assert pipeline.in_flight == 2 and pipeline.bytes_in_flight <= 2500
        gate.open.set()
        third.join(20)
        pipeline.close()
        assert gate.peak <= 2 and len(payloads(client, "s")) == 3


def test_a_transaction_larger_than_max_bytes_goes_alone(inproc: InProcessServer) -> None:
    with Client(inproc.target) as client, client.pipeline(max_bytes=10) as pipeline:
        handle = pipeline.produce("s", "a", [b"x" * 100, b"y" * 100])
    assert handle.result().last_position == 2


def test_an_error_fails_its_own_handle_and_the_next_flush(inproc: InProcessServer) -> None:
    with Client(inproc.target) as client:
        pipeline = client.pipeline()
        first = pipeline.produce("s", "a", b"1", expected_sequence=0)
        wrong = pipeline.produce("s", "b", b"2", expected_sequence=7)
        later = [pipeline.produce("s", "c", f"{i}".encode()) for i in range(3, 6)]
        with pytest.raises(SequenceMismatch) as caught:
            pipeline.flush()
        assert caught.value.segment == "b" and caught.value.actual == 0
        assert wrong.exception() is caught.value
        assert first.result().acks[0].last_sequence == 1
        assert all(not handle.result().duplicate for handle in later)
        pipeline.flush()  # the failure was reported once
        pipeline.close()
        assert sorted(payloads(client, "s")) == [b"1", b"3", b"4", b"5"]


def test_leaving_the_block_raises_the_first_failure_in_send_order(
    inproc: InProcessServer,
) -> None:
    with Client(inproc.target) as client:
        with pytest.raises(SequenceMismatch) as caught, client.pipeline() as pipeline:
            pipeline.produce("s", "a", b"1")
            pipeline.produce("s", "b", b"2", expected_sequence=5)
            pipeline.produce("s", "c", b"3", expected_sequence=6)
        assert caught.value.segment == "b"


def test_an_unknown_outcome_is_retried_under_its_transaction_id(proxy: FaultProxy) -> None:
    used = threading.Event()

    def fail_first_after_writing(forward: Forward, context: grpc.ServicerContext) -> bytes:
        answer = forward()
        if not used.is_set():
            used.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected after the write")
        return answer

    proxy.hooks["Produce"] = fail_first_after_writing
    with Client(proxy.target) as client:
        with client.pipeline() as pipeline:
            handles = [pipeline.produce("s", "a", f"{i}".encode()) for i in range(4)]
        results = [handle.result() for handle in handles]
        assert sum(r.duplicate for r in results) == 1, "the retried one is answered by the dedupe"
        assert proxy.calls["Produce"] == 5
        assert sorted(payloads(client, "s")) == [b"0", b"1", b"2", b"3"]


def test_a_failed_transaction_sent_again_under_its_id_is_not_written_twice(
    proxy: FaultProxy,
) -> None:
    used = threading.Event()

    def fail_first_after_writing(forward: Forward, context: grpc.ServicerContext) -> bytes:
        answer = forward()
        if not used.is_set():
            used.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected after the write")
        return answer

    proxy.hooks["Produce"] = fail_first_after_writing
    with Client(proxy.target, retry=RetryPolicy(attempts=1)) as client:
        pipeline = client.pipeline()
        lost = pipeline.produce("s", "a", b"x")
        with pytest.raises(Unavailable):
            pipeline.close()
        assert isinstance(lost.exception(), Unavailable)
        again = client.pipeline()
        retried = again.produce("s", "a", b"x", transaction_id=lost.transaction_id)
        again.close()
        assert retried.result().duplicate
        assert payloads(client, "s") == [b"x"]


def test_a_multi_segment_transaction_goes_through_the_pipeline(inproc: InProcessServer) -> None:
    with Client(inproc.target) as client:
        with client.pipeline() as pipeline:
            handle = pipeline.transaction("s").add("a", b"1").add("b", [b"2", b"3"]).commit()
        assert [ack.segment for ack in handle.result().acks] == ["a", "b"]
        assert handle.result().transaction_id == handle.transaction_id


def test_close_waits_for_every_ack_then_refuses_new_sends(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate
    with Client(proxy.target) as client:
        pipeline = client.pipeline()
        handles = [pipeline.produce("s", "a", f"{i}".encode()) for i in range(5)]
        closer = threading.Thread(target=pipeline.close)
        closer.start()
        wait_until(lambda: gate.arrived == 5, what="5 calls at the proxy")
        with pytest.raises(DeadlineExceeded):
            pipeline.flush(timeout=0.05)
        assert closer.is_alive() and not any(handle.done() for handle in handles)
        gate.open.set()
        closer.join(20)
        assert all(handle.done() for handle in handles)
        with pytest.raises(PipelineClosed):
            pipeline.produce("s", "a", b"late")
        assert len(payloads(client, "s")) == 5


def test_an_exception_in_the_block_cancels_the_transactions_in_flight(proxy: FaultProxy) -> None:
    gate = Gate(hold="before")
    proxy.hooks["Produce"] = gate
    with Client(proxy.target) as client:
        with pytest.raises(KeyError), client.pipeline() as pipeline:
            handles = [pipeline.produce("s", "a", f"{i}".encode()) for i in range(3)]
            wait_until(lambda: gate.arrived == 3, what="3 calls at the proxy")
            raise KeyError("the application failed")
        assert pipeline.in_flight == 0
        for handle in handles:
            error = handle.exception(timeout=5)
            assert isinstance(error, Cancelled) and handle.transaction_id in str(error)
        assert not handles[0].cancel(), "a handle cannot withdraw its transaction"
        gate.open.set()
        with pytest.raises(PipelineClosed):
            pipeline.produce("s", "a", b"late")


def test_a_retry_waiting_for_its_backoff_is_cancelled_too(proxy: FaultProxy) -> None:
    def refuse(forward: Forward, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, "injected: never reaches the server")

    proxy.hooks["Produce"] = refuse
    policy = RetryPolicy(initial_backoff=30, max_backoff=30, jitter=0)
    with Client(proxy.target, retry=policy) as client:
        pipeline = client.pipeline()
        handle = pipeline.produce("s", "a", b"x")
        wait_until(lambda: proxy.calls["Produce"] == 1, what="the first attempt")
        wait_until(lambda: _waiting_retry(pipeline), what="the retry timer")
        pipeline.cancel()
        error = handle.exception(timeout=5)
        assert isinstance(error, Cancelled) and handle.transaction_id in str(error)
        assert proxy.calls["Produce"] == 1


def test_closing_the_client_during_a_retry_backoff_fails_the_handle(proxy: FaultProxy) -> None:
    def refuse(forward: Forward, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, "injected: never reaches the server")

    proxy.hooks["Produce"] = refuse
    client = Client(proxy.target, retry=RetryPolicy(initial_backoff=0.2, jitter=0))
    pipeline = client.pipeline()
    handle = pipeline.produce("s", "a", b"x")
    wait_until(lambda: _waiting_retry(pipeline), what="the retry timer")
    client.close()  # the retry then meets a closed channel
    error = handle.exception(timeout=10)
    assert isinstance(error, Cancelled) and "the client" in str(error)
    with pytest.raises(Cancelled):
        pipeline.close()


def _waiting_retry(pipeline: object) -> bool:
    entries = pipeline._window.unended()  # type: ignore[attr-defined]
    return bool(entries) and isinstance(entries[0].call, threading.Timer)


def test_bad_window_settings_are_refused(inproc: InProcessServer) -> None:
    with Client(inproc.target) as client:
        for bad in ({"max_in_flight": 0}, {"max_bytes": -1}, {"max_in_flight": 1.5}):
            with pytest.raises(ValueError, match=next(iter(bad))):
                client.pipeline(**bad)  # type: ignore[arg-type]


def test_threads_share_one_pipeline(inproc: InProcessServer) -> None:
    with Client(inproc.target) as client:
        handles: list[list[ProduceFuture]] = [[] for _ in range(4)]
        with client.pipeline(max_in_flight=8) as pipeline:

            def produce(n: int) -> None:
                for i in range(50):
                    handles[n].append(pipeline.produce("s", f"t{n}", f"{n}/{i}".encode()))

            threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        results = [h.result() for mine in handles for h in mine]
        assert sorted(r.first_position for r in results) == list(range(1, 201))
        assert len(payloads(client, "s")) == 200
