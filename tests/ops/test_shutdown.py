"""Graceful shutdown of the real server process on SIGTERM and SIGINT."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import ServerProcess

from .helpers import CALL_TIMEOUT, NOT_SERVING, SERVING, produce, read_all, rpc_code, wait_until

BIG = bytes(range(256)) * 4


class Watcher:
    """A Health/Watch stream read in a thread; cancels itself at NOT_SERVING
    unless ``hold`` (then it keeps the call in flight)."""

    def __init__(self, channel: grpc.Channel, hold: bool = False) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        self.statuses: list[tuple[int, float]] = []
        self.hold = hold
        assert next(self.call).status == SERVING
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.statuses.append((reply.status, time.monotonic()))
                if reply.status == NOT_SERVING and not self.hold:
                    self.call.cancel()
        except grpc.RpcError:
            pass


class Follower:
    """A follow Consume read in a thread; records what it got and how it ended."""

    def __init__(self, stub: pb_grpc.StreamsServiceStub, space: str) -> None:
        self.call = stub.Consume(pb.ConsumeRequest(space=space, follow=True), timeout=60)
        self.call.initial_metadata()
        self.records: list[pb.Record] = []
        self.ended: tuple[grpc.StatusCode, float] | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        code = grpc.StatusCode.OK
        try:
            for response in self.call:
                self.records.extend(response.records)
        except grpc.RpcError as exc:
            code = exc.code()
        self.ended = (code, time.monotonic())


@dataclasses.dataclass
class Producer:
    """Produces one record to two segments per call until a call fails."""

    stub: pb_grpc.StreamsServiceStub
    space: str
    name: str
    acked: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    error: grpc.StatusCode | None = None
    details: str = ""
    calls: int = 0

    def run(self) -> None:
        i = 0
        while True:
            i += 1
            record = pb.RecordInput(payload=f"{self.name}:{i}".encode())
            request = pb.ProduceRequest(
                space=self.space,
                transaction_id=f"{self.name}-{i}",
                writes=[
                    pb.SegmentWrite(segment=f"{self.name}-{half}", records=[record])
                    for half in "ab"
                ],
            )
            self.calls += 1
            try:
                ack = self.stub.Produce(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                self.error, self.details = exc.code(), exc.details()
                return
            self.acked.append((i, ack.acks[0].last_sequence, ack.acks[1].last_sequence))


def test_sigterm_during_produce_and_follow(tmp_path: Path) -> None:
    grace = 5.0
    server = ServerProcess(tmp_path / "data", flags=["--shutdown-grace", str(grace)])
    with server.start():
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.StreamsServiceStub(channel)
        watcher = Watcher(channel)
        follower = Follower(stub, "busy")
        producers = [Producer(stub, "busy", f"p{n}") for n in range(4)]
        threads = [threading.Thread(target=p.run, daemon=True) for p in producers]
        for thread in threads:
            thread.start()
        big = pb.ProduceRequest(
            space="big",
            writes=[pb.SegmentWrite(segment="s", records=[pb.RecordInput(payload=BIG)] * 10_000)],
        )
        assert stub.Produce(big, timeout=CALL_TIMEOUT).acks[0].last_sequence == 10_000
        wait_until(lambda: all(len(p.acked) >= 5 for p in producers), what="producers running")
        # A large read (10 MB) in the server's hands when the signal comes (its
        # initial metadata came) and held there by flow control (nothing is read
        # yet): it must run to its end.
        in_flight = stub.Consume(pb.ConsumeRequest(space="big", segment="s"), timeout=CALL_TIMEOUT)
        in_flight.initial_metadata()

        server.send(signal.SIGTERM)
        sent = time.monotonic()
        got = [record for response in in_flight for record in response.records]
        assert [r.sequence for r in got] == list(range(1, 10_001))
        assert got[-1].payload == BIG
        for thread in threads:
            thread.join(grace + 5)
        assert not any(t.is_alive() for t in threads), "a Produce got neither an ack nor an error"
        code = server.wait(grace + 5)
        exited = time.monotonic()
        assert code == 0, server.stderr()[-2000:]
        assert exited - sent < grace, "an idle server should not wait out the grace period"

        watcher.thread.join(5)
        assert watcher.statuses and watcher.statuses[0][0] == NOT_SERVING
        follower.thread.join(5)
        assert follower.ended is not None
        assert follower.ended[0] == grpc.StatusCode.UNAVAILABLE
        assert follower.ended[1] - sent < 3.0
        for producer in producers:
            # Each ended on a refused call, UNAVAILABLE (which clients retry), never
            # CANCELLED: the drain hands every call gRPC holds to a handler first.
            assert producer.error == grpc.StatusCode.UNAVAILABLE, (
                producer.name,
                producer.error,
                producer.details,
            )
        # After the exit, calls fail.
        assert rpc_code(lambda: stub.Peek(pb.PeekRequest(space="busy"), timeout=3)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        channel.close()

    restarted = ServerProcess(server.data, tmp_path / "restarted.log")
    with restarted.start():
        channel = grpc.insecure_channel(restarted.target)
        stub = pb_grpc.StreamsServiceStub(channel)
        for producer in producers:
            a = read_all(stub, "busy", f"{producer.name}-a")
            b = read_all(stub, "busy", f"{producer.name}-b")
            # Dense sequences, and each transaction in both segments or in neither.
            assert [r.sequence for r in a] == list(range(1, len(a) + 1))
            assert [r.payload for r in a] == [r.payload for r in b]
            # Every acknowledged record is there, at its acknowledged sequence.
            for i, seq_a, seq_b in producer.acked:
                expected = f"{producer.name}:{i}".encode()
                assert a[seq_a - 1].payload == expected, (producer.name, i, seq_a)
                assert b[seq_b - 1].payload == expected, (producer.name, i, seq_b)
            # At most the call in flight at the signal may have landed unacked.
            assert len(a) - len(producer.acked) in (0, 1)
        # What the follower saw was durable.
        stored = {(r.position, r.payload) for r in read_all(stub, "busy")}
        assert {(r.position, r.payload) for r in follower.records} <= stored
        assert follower.records
        big_stored = read_all(stub, "big", "s")
        assert len(big_stored) == 10_000 and big_stored[-1].payload == BIG
        assert restarted.stop() == 0
        channel.close()


def test_sigint_refuses_new_calls_and_exits_within_the_grace(tmp_path: Path) -> None:
    grace = 3.0
    server = ServerProcess(tmp_path / "data", flags=["--shutdown-grace", str(grace)])
    with server.start():
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.StreamsServiceStub(channel)
        produce(stub, "s", "a", [b"one"])
        # An in-flight call that never ends by itself: the Watch holds the server
        # in its grace period, long enough to try new calls during the shutdown.
        watcher = Watcher(channel, hold=True)
        follower = Follower(stub, "s")
        server.send(signal.SIGINT)
        sent = time.monotonic()
        wait_until(lambda: watcher.statuses, what="NOT_SERVING on the Watch")
        assert watcher.statuses[0][0] == NOT_SERVING
        wait_until(lambda: follower.ended, timeout=2.0, what="the follow stream to end")
        assert follower.ended is not None and follower.ended[0] == grpc.StatusCode.UNAVAILABLE
        assert [r.payload for r in follower.records] == [b"one"]
        assert server.proc is not None and server.proc.poll() is None, "exited before the grace"
        # New calls are refused while the server drains: on the open connection ...
        assert rpc_code(lambda: produce(stub, "s", "a", [b"late"])) == grpc.StatusCode.UNAVAILABLE
        # ... and on a new one.
        with grpc.insecure_channel(server.target) as fresh:
            late = pb_grpc.StreamsServiceStub(fresh)
            assert rpc_code(lambda: late.Peek(pb.PeekRequest(space="s"), timeout=2)) == (
                grpc.StatusCode.UNAVAILABLE
            )
        assert server.wait(grace + 5) == 0, server.stderr()[-2000:]
        assert time.monotonic() - sent < grace + 2.0
        channel.close()
    # The late Produce was refused, not written.
    with ServerProcess(server.data, tmp_path / "restarted.log").start() as again:
        with grpc.insecure_channel(again.target) as channel:
            stored = read_all(pb_grpc.StreamsServiceStub(channel), "s", "a")
            assert [r.payload for r in stored] == [b"one"]
        assert again.stop() == 0


def test_sigterm_right_after_the_ready_line_is_a_graceful_stop(tmp_path: Path) -> None:
    """The signal handlers are in place before `listening on` is printed: a
    supervisor that stops the server as soon as it is ready gets exit code 0."""
    for attempt in range(5):
        server = ServerProcess(tmp_path / f"data{attempt}")
        with server.start():
            server.send(signal.SIGTERM)
            assert server.wait() == 0, (attempt, server.stderr()[-2000:])
