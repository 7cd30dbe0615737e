"""Failures of a JetStream deployment, seen by real clients of real gateways.

Two gateways (``server.py --storage jetstream``, processes) over the 3-node
test cluster (``nats_cluster``); producers on both gateways send transactions
with ids and retry every unanswered one with the same id (on the other
gateway: a client moves on when its gateway fails it); followers on both
gateways (each space, and one segment) reconnect from the next offset they
need, on the other gateway. What clients were told is kept in a journal
(tests/support/journal.py) and the store is checked against it at the end:
every acknowledged transaction present exactly once, where its ack says,
none partial; positions and sequences dense; every follower saw every record
in order, without gap or repeat, identical to what is stored.

- A stream leader (a NATS node) killed with SIGKILL under that load: the
  above holds, writes resume (the stall from the kill to the first
  acknowledged write sent after it is measured and printed), and the node,
  started again, catches up and then leads the stream: a gateway connected to
  it alone reads everything back and writes.
- A gateway killed with SIGKILL under that load: its clients retry through
  the other one with the same transaction ids, nothing is lost or written
  twice, and every transaction the killed gateway acknowledged, sent again
  through the other (and through the killed one once restarted), is answered
  duplicate=true with the numbers of the original answer.

The load lasts STREAMS_JS_FAILURE_SECONDS (default 2) before each failure and
again after writes resume, for longer runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest

from streams.storage.jetstream.names import Names
from streams.v1 import streams_pb2 as pb
from tests.support.journal import (
    UNKNOWN_OUTCOME,
    Follower,
    Journal,
    Stub,
    Txn,
    check_store,
)
from tests.support.nats import NatsCluster
from tests.support.process import ServerProcess
from tests.support.waiting import wait_until

from .harness import ack_shape_problem, make_request
from .support import COUNTERS

LOAD_SECONDS = float(os.environ.get("STREAMS_JS_FAILURE_SECONDS", "2"))
SPACES = ("orders", "audit.log")
SEGMENTS = ("hot", "s1", "s10", "é/x")
FOLLOWED = (("orders", ""), ("audit.log", ""), ("orders", "hot"))
PRODUCERS_PER_GATEWAY = 2
# Before a failure, and after writes resume: at least this many acks per space.
MIN_ACKS = 20
# A gateway waits up to 10 s for JetStream's answer to a batch (api.TIMEOUT):
# the client waits longer, so that the gateway's own answer comes first.
CALL_TIMEOUT = 15.0
# A client's pause before it sends an unanswered transaction again.
RETRY_PAUSE = 0.05
# A transaction still unacknowledged after this long fails the test.
GIVE_UP_SECONDS = 90.0
RESUME_TIMEOUT = 90.0


@dataclasses.dataclass(frozen=True)
class Answer:
    """One acknowledged transaction, as its producer saw it."""

    txn: Txn
    producer: int
    gateway: int  # the gateway that answered
    sent: float  # when the answered attempt was sent (monotonic)
    answered: float
    attempts: int  # 1: the first attempt was answered
    first_gateway: int  # the gateway of the first attempt


class Load:
    """Producers and followers over ``gateways``; what they were told."""

    def __init__(self, gateways: list[ServerProcess], seed: int) -> None:
        self.stubs: list[Stub] = [g.stub for g in gateways]
        self.seed = seed
        self.journal = Journal()
        self.lock = threading.Lock()
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self.followers = [
            (Follower(space, segment), home)
            for home in range(len(gateways))
            for space, segment in FOLLOWED
        ]
        self._calls: dict[int, grpc.Call] = {}
        self._stop_producers = threading.Event()
        self._stop_followers = threading.Event()
        producers = PRODUCERS_PER_GATEWAY * len(gateways)
        self._producers = [
            threading.Thread(target=self._producer, args=(i, i % len(gateways)), daemon=True)
            for i in range(producers)
        ]
        self._follower_threads = [
            threading.Thread(target=self._follower, args=(f, home), daemon=True)
            for f, home in self.followers
        ]

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        for t in (*self._producers, *self._follower_threads):
            t.start()

    def acks_since(self, when: float, space: str) -> list[Answer]:
        """Acks of attempts sent at or after ``when`` to ``space``."""
        with self.lock:
            return [a for a in self.answers if a.sent >= when and a.txn.space == space]

    def wait_load(self, since: float, what: str) -> None:
        """Waits until each space has MIN_ACKS acks of attempts sent after
        ``since`` and LOAD_SECONDS passed since the first of them (fails on
        any client error meanwhile)."""

        def enough() -> bool:
            self.raise_errors()
            for space in SPACES:
                acks = self.acks_since(since, space)
                if len(acks) < MIN_ACKS:
                    return False
                if time.monotonic() - min(a.answered for a in acks) < LOAD_SECONDS:
                    return False
            return True

        wait_until(enough, RESUME_TIMEOUT + LOAD_SECONDS, what)

    def finish(self) -> None:
        """Stops the producers (each finishes its transaction: everything sent
        is acknowledged), waits until every follower has received up to the
        last acknowledged offset of its target, then stops the followers."""
        self._stop_producers.set()
        for t in self._producers:
            t.join(GIVE_UP_SECONDS + CALL_TIMEOUT)
        self.raise_errors()

        def followed() -> bool:
            self.raise_errors()
            for f, _ in self.followers:
                with self.journal.lock:
                    top = (
                        self.journal.acked_sequence[(f.space, f.segment)]
                        if f.segment
                        else self.journal.acked_position[f.space]
                    )
                if f.next_offset <= top:
                    return False
            return True

        wait_until(followed, 60.0, "every follower to receive every acknowledged record")
        self.stop()

    def stop(self) -> None:
        self._stop_producers.set()
        self._stop_followers.set()
        with self.lock:
            calls = list(self._calls.values())
        for call in calls:
            call.cancel()
        for t in (*self._producers, *self._follower_threads):
            t.join(CALL_TIMEOUT + 5)

    def raise_errors(self) -> None:
        with self.lock:
            errors = list(self.errors)
        for f, _ in self.followers:
            with f.lock:
                errors += f.errors
        if errors:
            pytest.fail(
                f"seed {self.seed}: {len(errors)} client error(s):\n  " + "\n  ".join(errors[:30])
            )

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    # -- workers ---------------------------------------------------------------------------

    def _producer(self, index: int, gateway: int) -> None:
        rng = random.Random(self.seed * 100 + index)
        n = 0
        while not self._stop_producers.is_set():
            n += 1
            req = make_request(rng, f"p{index}-{n}", SPACES, SEGMENTS)
            gateway = self._produce(index, self.journal.sent(req), gateway)

    def _produce(self, producer: int, txn: Txn, gateway: int) -> int:
        """Sends ``txn`` until it is acknowledged, moving to the next gateway
        after each unanswered attempt; returns the gateway that answered."""
        first_gateway, attempts = gateway, 0
        give_up = time.monotonic() + GIVE_UP_SECONDS
        while True:
            attempts += 1
            sent = time.monotonic()
            try:
                resp = self.stubs[gateway].Produce(txn.request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as err:
                if err.code() not in UNKNOWN_OUTCOME:
                    self.error(f"Produce {txn.txid} via gateway {gateway}: {err.code()} {err}")
                    self.journal.unanswered(txn)
                    return gateway
            except ValueError:  # the channel was closed under us: unknown outcome
                pass
            else:
                problem = ack_shape_problem(txn.request, resp, retry=attempts > 1)
                if problem:
                    self.error(f"Produce {txn.txid} via gateway {gateway}: {problem}")
                self.journal.acked(txn, resp)
                answer = Answer(
                    txn, producer, gateway, sent, time.monotonic(), attempts, first_gateway
                )
                with self.lock:
                    self.answers.append(answer)
                return gateway
            self.journal.unanswered(txn)
            if time.monotonic() > give_up:
                self.error(f"Produce {txn.txid}: no answer for {GIVE_UP_SECONDS} s")
                return gateway
            gateway = (gateway + 1) % len(self.stubs)
            time.sleep(RETRY_PAUSE)

    def _follower(self, f: Follower, gateway: int) -> None:
        while not self._stop_followers.is_set():
            req = pb.ConsumeRequest(
                space=f.space, segment=f.segment, from_offset=f.next_offset, follow=True
            )
            try:
                call = self.stubs[gateway].Consume(req, timeout=600)
                with self.lock:
                    self._calls[id(f)] = call
                if self._stop_followers.is_set():
                    call.cancel()
                for resp in call:
                    f.received(resp.records)
                self.error(f"follower {f.space}/{f.segment!r}: the stream ended with no error")
            except grpc.RpcError as err:
                if self._stop_followers.is_set():
                    return
                if err.code() not in UNKNOWN_OUTCOME:
                    self.error(f"follower {f.space}/{f.segment!r}: {err.code()} {err}")
            except ValueError:
                pass
            except AssertionError:  # a gap or a repeat: in f.errors
                return
            f.reconnects += 1
            gateway = (gateway + 1) % len(self.stubs)
            time.sleep(RETRY_PAUSE)


# -- gateways and checks ---------------------------------------------------------------------


def gateway(tmp_path: Path, name: str, urls: list[str], prefix: str) -> ServerProcess:
    data = tmp_path / name / "data"  # unused by this backend, but --data is always given
    data.mkdir(parents=True)
    flags = ("--storage", "jetstream", "--nats-url", ",".join(urls), "--nats-prefix", prefix)
    return ServerProcess(data, tmp_path / f"{name}.log", flags=flags)


@pytest.fixture
def deployment(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[list[ServerProcess]]:
    """Two gateways over the cluster, with a deployment prefix of their own;
    every node running again afterwards."""
    prefix = f"f{uuid.uuid4().hex[:12]}"
    gateways = [gateway(tmp_path, f"g{i}", nats_cluster.urls, prefix) for i in range(2)]
    try:
        for g in gateways:
            g.start()
        yield gateways
    finally:
        for g in gateways:
            g.close()
        nats_cluster.heal()


def prefix_of(server: ServerProcess) -> str:
    return server.flags[server.flags.index("--nats-prefix") + 1]


def check(stub: Stub, load: Load, what: str) -> int:
    """check_store through ``stub``; fails naming every problem; returns the
    number of records read back."""
    report, views = check_store(stub, load.journal, SPACES, [f for f, _ in load.followers])
    if report.problems:
        pytest.fail(
            f"seed {load.seed}, {what}: {len(report.problems)} problem(s):\n  "
            + "\n  ".join(report.problems)
        )
    assert report.acked_present == len(load.journal.txns), "every transaction is acknowledged"
    return sum(len(v.records) for v in views.values())


def resend(stub: Stub, answers: list[Answer], via: str) -> int:
    """Sends each acknowledged transaction again: each must be answered
    duplicate=true with the numbers of its original answer."""
    problems = []
    for a in answers:
        original = a.txn.ack
        assert original is not None
        resp = stub.Produce(a.txn.request, timeout=CALL_TIMEOUT)
        if not resp.duplicate:
            problems.append(f"{a.txn.txid} sent again via {via}: written again, not a duplicate")
        copy = pb.ProduceResponse()
        copy.CopyFrom(resp)
        copy.duplicate = original.duplicate
        if copy != original:
            problems.append(f"{a.txn.txid} sent again via {via}: {resp} differs from {original}")
    assert not problems, "\n".join(problems[:20])
    return len(answers)


def resumption(load: Load, since: float, spaces: list[str]) -> tuple[float, float]:
    """Seconds from ``since`` to the first acknowledged write to one of
    ``spaces`` sent after it, and until every producer had one (any space)."""
    after = [a for a in load.answers if a.sent >= since]
    first = min(a.answered for a in after if a.txn.space in spaces)
    producers = {a.producer for a in load.answers}
    # A producer's first answer after ``since`` may be a retry of a transaction
    # sent before it (seen in CI): counted, it wrote again.
    each = max(
        min(
            (a.answered for a in load.answers if a.producer == p and a.answered >= since),
            default=math.inf,
        )
        for p in producers
    )
    return first - since, each - since


def step_down_to(url: str, stream: str, node: str) -> None:
    """Asks the leader of ``stream`` to hand leadership to ``node``."""

    async def ask() -> dict[str, object]:
        client = await nats.connect(url)
        try:
            body = json.dumps({"placement": {"preferred": node}}).encode()
            reply = await client.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=10
            )
            answer: dict[str, object] = json.loads(reply.data)
            return answer
        finally:
            await client.close()

    answer = asyncio.run(ask())
    assert answer.get("success"), f"leader step-down of {stream} to {node}: {answer}"


def seed() -> int:
    return int(os.environ.get("STREAMS_JS_FAILURE_SEED", str(random.randrange(1 << 30))))


# -- the tests -------------------------------------------------------------------------------


def test_stream_leader_killed_under_load_then_restarted(
    tmp_path: Path, nats_cluster: NatsCluster, deployment: list[ServerProcess]
) -> None:
    cluster = nats_cluster
    names = Names(prefix_of(deployment[0]))
    streams = {space: names.stream(space) for space in SPACES}
    load = Load(deployment, seed())
    try:
        started = time.monotonic()
        load.start()
        load.wait_load(started, "load before the kill")
        leader = cluster.wait_leader_of(streams[SPACES[0]])
        led = [s for s in SPACES if cluster.leader_of(streams[s]) == leader]
        killed_at = time.monotonic()
        cluster.kill(leader)
        load.wait_load(killed_at, "writes to resume after the leader's kill")
        load.finish()
    finally:
        load.stop()
    stall, every_producer = resumption(load, killed_at, led)
    retried = sum(a.attempts > 1 for a in load.answers)
    followed = sum(len(f.records) for f, _ in load.followers)
    # Produce resumed once the spaces' streams had leaders, but listing a
    # space's segments asks for stream info and a bucket's keys (a consumer),
    # which need the meta leader: when the kill took that one too, reads
    # answer UNAVAILABLE ("JetStream system temporarily unavailable") until
    # the two survivors elect one (seen in CI).
    buckets = [f"KV_{names.bucket(kind)}" for kind in ("catalog", "offsets", "dedupe")]
    cluster.wait_meta_leader()
    for stream in (*streams.values(), *buckets):
        cluster.wait_leader_of(stream)
    records = check(deployment[1].stub, load, "after the leader's kill")
    check(deployment[0].stub, load, "after the leader's kill, through the other gateway")

    # The killed node comes back, catches up, and leads: it serves every read
    # through the leader, and a gateway connected to it alone reads it all.
    restarted_at = time.monotonic()
    cluster.start(leader)
    for stream in (*streams.values(), *buckets):
        cluster.wait_caught_up(leader, stream)
    caught_up = time.monotonic() - restarted_at
    for stream in streams.values():
        step_down_to(cluster.urls[leader], stream, cluster.names[leader])
        wait_until(
            lambda s=stream: cluster.leader_of(s) == leader,
            30.0,
            f"{cluster.names[leader]} to lead {stream}",
        )
    alone = gateway(tmp_path, "alone", [cluster.urls[leader]], prefix_of(deployment[0]))
    with alone:
        alone.start()
        check(alone.stub, load, f"through a gateway connected to {cluster.names[leader]} alone")
        for i, space in enumerate(SPACES):
            req = make_request(random.Random(i), f"after-{i}", (space,), SEGMENTS)
            resp = alone.stub.Produce(req, timeout=CALL_TIMEOUT)
            assert ack_shape_problem(req, resp) is None
            load.journal.acked(load.journal.sent(req), resp)
        load.followers.clear()  # they were stopped: nothing more to compare with them
        check(alone.stub, load, f"after writes through {cluster.names[leader]} alone")

    print(
        f"\njetstream leader kill (seed {load.seed}): {cluster.names[leader]} (leader of {led}) "
        f"killed under {PRODUCERS_PER_GATEWAY * len(deployment)} producers on 2 gateways; first "
        f"acknowledged write sent after the kill {stall:.2f} s after it, every producer "
        f"writing again after {every_producer:.2f} s; {len(load.journal.txns)} transactions "
        f"({records} records) "
        f"checked, {retried} retried, {followed} records followed; restarted node caught up "
        f"in {caught_up:.2f} s"
    )
    COUNTERS["jetstream leader kill: write stall (s)"] = round(stall, 2)
    COUNTERS["jetstream leader kill: every producer writing again (s)"] = round(every_producer, 2)
    COUNTERS["jetstream leader kill: transactions checked"] = len(load.journal.txns)
    COUNTERS["jetstream leader kill: records checked"] = records
    COUNTERS["jetstream leader kill: restarted node caught up (s)"] = round(caught_up, 2)
    assert led, "the killed node led a space's stream"


def test_gateway_killed_under_load_clients_retry_through_the_other(
    deployment: list[ServerProcess],
) -> None:
    killed, other = deployment
    load = Load(deployment, seed())
    try:
        started = time.monotonic()
        load.start()
        load.wait_load(started, "load before the kill")
        killed_at = time.monotonic()
        killed.kill()
        load.wait_load(killed_at, "writes through the other gateway")
        load.finish()
    finally:
        load.stop()
    stall, every_producer = resumption(load, killed_at, list(SPACES))
    # Sent to the killed gateway first, answered by the other one.
    moved = [a for a in load.answers if a.first_gateway == 0 and a.gateway == 1]
    duplicates = sum(a.txn.ack is not None and a.txn.ack.duplicate for a in moved)
    followed = sum(len(f.records) for f, _ in load.followers)
    moved_followers = sum(f.reconnects > 0 for f, home in load.followers if home == 0)
    records = check(other.stub, load, "after the gateway's kill")

    # Every transaction the killed gateway acknowledged, sent again through
    # the other: duplicate=true with its original numbers. Then the killed
    # gateway, restarted (it holds nothing), answers the same for the other's.
    resent = resend(other.stub, [a for a in load.answers if a.gateway == 0], "the other gateway")
    killed.start()
    answered_by_other = [a for a in load.answers if a.gateway == 1]
    resent += resend(killed.stub, answered_by_other[:200], "the restarted gateway")
    assert check(killed.stub, load, "through the restarted gateway") == records

    print(
        f"\njetstream gateway kill (seed {load.seed}): {len(load.journal.txns)} transactions "
        f"({records} records) checked, {len(moved)} moved to the other gateway "
        f"({duplicates} answered duplicate=true), {moved_followers} followers moved, "
        f"{followed} records followed, "
        f"{resent} acknowledged transactions sent again and answered as duplicates; first "
        f"acknowledged write sent after the kill {stall:.2f} s after it, every producer "
        f"writing again after {every_producer:.2f} s"
    )
    COUNTERS["jetstream gateway kill: transactions checked"] = len(load.journal.txns)
    COUNTERS["jetstream gateway kill: records checked"] = records
    COUNTERS["jetstream gateway kill: retried through the other gateway"] = len(moved)
    COUNTERS["jetstream gateway kill: duplicates answered with the original numbers"] = resent
    assert moved, "no transaction was retried through the other gateway"
    assert moved_followers == len(FOLLOWED), "every follower of the killed gateway moved"
