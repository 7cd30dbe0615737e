"""Clients that never take their responses (HTTP/2 window 0, see stalled.py):
they hold no more than the memory budget, cannot lock other readers out, and
are cut off at the slow-consumer deadline.

Servers run as processes with an 8 MiB budget (tests/memory/test_attacks.py's
Server). The fairness tests set a slow-consumer deadline far beyond their own
deadlines, so what lets the other readers through is the sharing of the
budget, not the cut-off; the cut-off test sets it to 1 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.memory.budget_server import BUDGET, MIB, NO_BDP, PROBE_DEADLINE, SLACK, Server
from tests.memory.stalled import StalledClient
from tests.ops.helpers import wait_until

RECORD = b"x" * (256 * 1024)
# What one stalled call costs outside the budget (its call, task and buffers).
PER_CALL = 64 * 1024
PATIENT = 600  # --slow-consumer-seconds for the fairness tests: never reached


def stall(server: Server, calls: int, method: str, request: bytes) -> list[StalledClient]:
    """``calls`` calls of ``method`` over 3 stalled connections."""
    clients = [StalledClient(server.process.target) for _ in range(3)]
    for i in range(calls):
        clients[i % 3].call(method, request)
    return clients


def test_stalled_followers_leave_room_for_another_reader(servers) -> None:
    server = servers("followers", slow_consumer_seconds=PATIENT)
    # Small records, as the attack had: a share cut smaller and smaller still
    # holds one, until nothing is left for anyone.
    record = b"x" * 1000
    server.produce("s", {"a": [record] * 10_000})  # each follower reads from 1
    server.produce("other", {"a": [record] * 1000})
    server.mark()
    followers = 150
    request = pb.ConsumeRequest(space="s", follow=True).SerializeToString()
    clients = stall(server, followers, "Consume", request)
    try:
        # Settled: every follower holds a response (one record at least), or
        # one of them waits for memory.
        wait_until(
            lambda: (
                server.metric("streams_active_consume_streams") == followers
                and (
                    server.metric("streams_memory_waiting_streams") >= 1
                    or server.metric("streams_memory_used_bytes", use="responses")
                    >= followers * 2 * len(record)
                )
            ),
            timeout=30,
            what="every follower holding a response, or one waiting for memory",
        )
        # Another reader on its own connection reads everything, within a deadline.
        with grpc.insecure_channel(server.process.target, options=NO_BDP) as channel:
            stub = pb_grpc.StreamsServiceStub(channel)
            responses = stub.Consume(pb.ConsumeRequest(space="other"), timeout=10)
            assert sum(len(r.records) for r in responses) == 1000
        bound = BUDGET + followers * PER_CALL + SLACK
        assert server.growth() <= bound, f"RSS grew {server.growth() / MIB:.1f} MiB"
        assert server.metric("streams_slow_consumers_total") == 0
    finally:
        for client in clients:
            client.close()


def test_stalled_peeks_hold_no_more_than_the_budget(servers) -> None:
    server = servers("peeks", slow_consumer_seconds=PATIENT)
    # Each response charged twice: 1 MiB, so the half of the budget large
    # responses may use holds 4, one per stalled connection and the probe's.
    big = b"p" * (512 * 1024 - 100)
    server.produce("big", {"a": [big]})
    server.mark()
    peeks = 120  # 120 responses of 512 KiB, each held twice: 120 MiB without a budget
    bound = BUDGET + peeks * PER_CALL + SLACK
    request = pb.PeekRequest(space="big", segment="a").SerializeToString()
    clients = stall(server, peeks, "Peek", request)
    try:
        wait_until(
            lambda: (
                server.metric("streams_memory_waiting_streams") >= peeks - len(clients)
                or server.growth() > bound
            ),
            timeout=30,
            what="every Peek holding its response or waiting for memory",
        )
        assert server.growth() <= bound, f"RSS grew {server.growth() / MIB:.1f} MiB"
        # A Peek of the same record on another connection is answered within the deadline.
        with grpc.insecure_channel(server.process.target, options=NO_BDP) as channel:
            stub = pb_grpc.StreamsServiceStub(channel)
            reply = stub.Peek(pb.PeekRequest(space="big", segment="a"), timeout=PROBE_DEADLINE)
            assert reply.record.payload == big
        server.probe()
        assert server.growth() <= bound, f"RSS grew {server.growth() / MIB:.1f} MiB"
    finally:
        for client in clients:
            client.close()


def test_a_client_that_takes_nothing_is_cut_off_at_the_deadline(servers, tmp_path: Path) -> None:
    deadline = 1.0
    server = servers("cut", slow_consumer_seconds=deadline)
    server.produce("s", {"a": [RECORD] * 8})
    follow = server.stub.Consume(pb.ConsumeRequest(space="s", from_end=True, follow=True))
    follow.initial_metadata()  # a healthy follower on another connection
    stalled = StalledClient(server.process.target)
    try:
        started = time.monotonic()
        stalled.call("Consume", pb.ConsumeRequest(space="s", follow=True).SerializeToString())
        stalled.call("Peek", pb.PeekRequest(space="s", segment="a").SerializeToString())
        assert stalled.closed.wait(30), "the stalled connection was never closed"
        took = time.monotonic() - started
        assert deadline <= took < deadline + 5, f"closed after {took:.1f}s"
        wait_until(
            lambda: (
                server.metric("streams_memory_used_bytes", use="responses") == 0
                and server.metric("streams_active_consume_streams") == 1
            ),
            what="the stalled calls' memory and stream given back",
        )
        assert server.metric("streams_slow_consumers_total") == 1
        log = server.process.stderr()
        assert "slow consumer" in log and "--slow-consumer-seconds" in log, log[-2000:]
        # The healthy follower goes on.
        server.produce("s", {"a": [b"after"]})
        assert next(follow).records[0].payload == b"after"
    finally:
        follow.cancel()
        stalled.close()
