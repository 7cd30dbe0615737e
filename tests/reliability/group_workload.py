"""A randomized consumer-group run against a real server, every event fed to
:class:`~tests.support.group_checker.GroupChecker`.

Producers write transactions over many segments (a few of them hot, now and
then a poison record that members always nack or let time out) while members
join, consume, ack (now, in batches, or late: past the ack timeout), nack
(retry or park, with reasons), let deliveries time out, ack and nack records
they do not hold, and are killed mid-record (stream cancelled) or leave (half
close). Optionally the server is killed with SIGKILL and started again on its
data (the crash harness's ServerProcess). The run ends once GetGroup says
everything is settled; then every member leaves and the end state is checked.

Seeded: ``STREAMS_GROUP_SEED`` repeats a run's random choices (the timing of
a real server is never the same twice, so a seed makes a failure likely, not
certain, to come back). Sizes: ``STREAMS_GROUP_RECORDS``,
``STREAMS_GROUP_SEGMENTS``, ``STREAMS_GROUP_CRASHES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.group_checker import ACK, NONE, PARK, PER_SEGMENT, RETRY, GroupChecker
from tests.support.group_wire import WireMember
from tests.support.process import ServerProcess

CALL_TIMEOUT = 10.0
# What a member's stream or call may see while the server is killed.
CRASH_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
REASONS = ("", "bad input", "timeout talking to x", "é/€ 𝄞", "r" * 300)
METADATA: tuple[dict[str, str], ...] = (
    {},
    {"k": "v"},
    {"streams-parked-reason": "forged", "keep": "é"},
    {"a": ""},
)


def env_seed(name: str = "STREAMS_GROUP_SEED") -> int:
    return int(os.environ.get(name, str(random.randrange(1 << 30))))


@dataclasses.dataclass
class Plan:
    seed: int
    records: int = 3_000
    segments: int = 1_000
    members: int = 8
    ordering: str = PER_SEGMENT
    ack_timeout: float = 0.5
    max_attempts: int = 4
    poison: float = 0.003
    crashes: int = 0
    # Records produced and not yet settled before producers wait.
    lead: int = 400
    # Seconds allowed for everything to settle once production ended.
    settle_seconds: float = 60.0

    @classmethod
    def from_env(cls, seed: int, **defaults: object) -> Plan:
        plan = cls(seed=seed, **defaults)  # type: ignore[arg-type]
        for field in ("records", "segments", "crashes"):
            value = os.environ.get(f"STREAMS_GROUP_{field.upper()}")
            if value:
                setattr(plan, field, int(value))
        return plan


class GroupRun:
    def __init__(self, server: ServerProcess, plan: Plan, space: str, group: str) -> None:
        self.server = server
        self.plan = plan
        self.space = space
        self.group = group
        self.rng = random.Random(plan.seed)
        self.checker = GroupChecker(plan.ordering, plan.max_attempts, space)
        self.life = 0
        self.up = asyncio.Event()
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.StreamsServiceStub | None = None
        self.produced = 0
        self.acked_payloads: set[bytes] = set()
        self.last_position = 0
        self.producing = True
        self.done = asyncio.Event()
        self.progress = asyncio.Condition()
        self.wires: dict[str, WireMember] = {}
        self.member_tasks: dict[str, asyncio.Task[None]] = {}
        self.leaving: set[str] = set()
        self.closing = False  # everyone was asked to leave (the end of the run)
        self.killed: set[str] = set()
        self.pending: dict[str, list[int]] = {}
        self.next_member = 0
        self.kills = 0
        self.leaves = 0
        self.crashes = 0
        self.info: pb.GroupInfo | None = None
        self.parked: list[pb.Record] = []
        self.settled = False
        self.violations: list[str] = []
        self._background: set[asyncio.Task[None]] = set()

    # -- plumbing --------------------------------------------------------------

    def _connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.server.target)
        self.stub = pb_grpc.StreamsServiceStub(self.channel)
        self.up.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def group_config(self) -> pb.Group:
        ordering = (
            pb.ORDERING_PER_SEGMENT if self.plan.ordering == PER_SEGMENT else (pb.ORDERING_NONE)
        )
        group = pb.Group(
            name=self.group,
            space=self.space,
            ordering=ordering,
            max_attempts=self.plan.max_attempts,
        )
        group.ack_timeout.FromNanoseconds(int(self.plan.ack_timeout * 1e9))
        return group

    # -- producers -------------------------------------------------------------

    def _request(self, rng: random.Random, txid: str) -> pb.ProduceRequest:
        hot = max(1, self.plan.segments // 20)
        writes = []
        for segment in {
            f"s{rng.randrange(hot if rng.random() < 0.5 else self.plan.segments):04}"
            for _ in range(rng.choice((1, 1, 2, 3)))
        }:
            records = []
            for i in range(rng.choice((1, 1, 2, 3))):
                mark = b"poison:" if rng.random() < self.plan.poison else b""
                records.append(
                    pb.RecordInput(
                        payload=mark + f"{txid}/{segment}/{i}".encode(),
                        metadata=rng.choice(METADATA),
                    )
                )
            writes.append(pb.SegmentWrite(segment=segment, records=records))
        return pb.ProduceRequest(space=self.space, writes=writes, transaction_id=txid)

    async def producer(self, index: int) -> None:
        rng = random.Random(self.plan.seed * 31 + index)
        n = 0
        while self.produced < self.plan.records:
            async with self.progress:
                await self.progress.wait_for(
                    lambda: self.last_position - self.checker.durable_through < self.plan.lead
                )
            n += 1
            request = self._request(rng, f"p{index}-{n}")
            self.produced += sum(len(w.records) for w in request.writes)
            while True:  # the same transaction_id until answered: stored once
                await self.up.wait()
                assert self.stub is not None
                life = self.life
                try:
                    response = await self.stub.Produce(request, timeout=CALL_TIMEOUT)
                except asyncio.CancelledError:
                    if not self._cut_by_crash(life):
                        raise
                    continue
                except grpc.aio.AioRpcError as err:
                    if err.code() not in CRASH_CODES:
                        raise
                    if not self.plan.crashes:
                        raise
                    await asyncio.sleep(0.05)  # the server is being restarted
                    continue
                break
            self.acked_payloads.update(r.payload for w in request.writes for r in w.records)
            self.last_position = max(self.last_position, response.last_position)

    # -- members ---------------------------------------------------------------

    def add_member(self) -> None:
        self.next_member += 1
        key = f"m{self.next_member}"
        rng = random.Random(self.plan.seed * 1_000 + self.next_member)
        max_in_flight = rng.choice((1, 2, 5, 20, 0))
        assert self.stub is not None
        wire = WireMember(self.stub, self.space, self.group, key, max_in_flight)
        self.wires[key] = wire
        self.member_tasks[key] = asyncio.ensure_future(
            self._member(key, wire, rng, max_in_flight, self.life)
        )

    def live_members(self) -> list[str]:
        return [k for k in self.wires if self.checker.alive(k)]

    async def _member(
        self, key: str, wire: WireMember, rng: random.Random, max_in_flight: int, life: int
    ) -> None:
        try:
            member_id = await wire.join()
            if life != self.life:
                return
            self.checker.joined(key, member_id, max_in_flight)
            if self.closing:  # joined as everyone was asked to leave
                self.leave(key)
            while True:
                batch = await wire.read()
                if life != self.life:
                    return
                if batch is None:
                    if key not in self.leaving:
                        self.checker.violation(f"{key}: the server ended the stream with OK")
                        self.checker.ended(key)
                    return
                for delivery in batch:
                    self.checker.delivered(key, delivery.record, delivery.attempt)
                    if key not in self.leaving:
                        self._decide(key, wire, rng, delivery)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
            if life != self.life or key in self.killed or not isinstance(err, grpc.aio.AioRpcError):
                return
            how = "after it half-closed" if key in self.leaving else "unasked"
            self.checker.violation(
                f"{key}: the stream ended {how} with {err.code()}: {err.details()} "
                f"({err.debug_error_string()})"
            )
            self.checker.ended(key)

    def _decide(
        self, key: str, wire: WireMember, rng: random.Random, delivery: pb.Delivery
    ) -> None:
        p = delivery.record.position
        loop = asyncio.get_running_loop()
        if delivery.record.payload.startswith(b"poison:"):
            if rng.random() < 0.75:
                self._answer(key, wire, RETRY, [p], rng.choice(REASONS))
            return  # else: let it time out
        x = rng.random()
        if x < 0.62:
            self.pending.setdefault(key, []).append(p)
            if len(self.pending[key]) == 1:
                delay = rng.choice((0.0, 0.0, 0.005, 0.02))
                loop.call_later(delay, self._flush, key, wire)
        elif x < 0.72:
            delay = rng.uniform(0, 1.5 * self.plan.ack_timeout)
            loop.call_later(delay, self._late_ack, key, wire, p)
        elif x < 0.80:
            self._answer(key, wire, RETRY, [p], rng.choice(REASONS))
        elif x < 0.84:
            self._answer(key, wire, PARK, [p], rng.choice(REASONS))
        elif x < 0.90:
            pass  # lost in thought: the ack timeout redelivers it
        else:
            # Answers for records this member does not hold (settled, or never
            # written) are ignored; its own ack goes along. Only records that
            # can never be on their way to this member: another member's record
            # may move here (its member is killed while the answer is still
            # being sent) and the server then applies it (see the findings'
            # "blind answers"); test_group_edges.py checks that case alone.
            through = self.checker.durable_through
            settled = [1, through] if through else []
            strays = [*settled, p + 1_000_000, 2**64 - 1]
            kind = rng.choice((ACK, RETRY, PARK))
            self._answer(key, wire, kind, strays, "stray")
            self._answer(key, wire, ACK, [p], "")

    # Acks sent later than decided go only for records the member still
    # holds. Once it has answered a record otherwise (a nack of a redelivery),
    # the record may be on its way to it again, and an ack sent then is a
    # blind answer the server may apply to that delivery (see the strays above).

    def _late_ack(self, key: str, wire: WireMember, p: int) -> None:
        self._flush_held(key, wire, [p])

    def _flush(self, key: str, wire: WireMember) -> None:
        self._flush_held(key, wire, self.pending.pop(key, []))

    def _flush_held(self, key: str, wire: WireMember, positions: list[int]) -> None:
        held = self.checker.members[key].held
        positions = [p for p in positions if p in held]
        if positions:
            self._answer(key, wire, ACK, positions, "")

    def _answer(
        self, key: str, wire: WireMember, kind: str, positions: list[int], reason: str
    ) -> None:
        if not self.checker.alive(key) or key in self.leaving:
            return
        self.checker.answered(key, positions, kind, reason)
        # At most max_in_flight positions per message (finding F1: more end the stream).
        most = self.checker.members[key].max_in_flight
        for i in range(0, len(positions), most):
            chunk = positions[i : i + most]
            if kind == ACK:
                self._spawn(self._send(wire.ack(chunk)))
            else:
                action = pb.NACK_ACTION_PARK if kind == PARK else pb.NACK_ACTION_RETRY
                self._spawn(self._send(wire.nack(chunk, action, reason)))

    async def _send(self, coro: Awaitable[None]) -> None:
        # A stream that ended (killed, left, the server gone) refuses writes;
        # what was not sent is redelivered, as the checker expects.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await coro

    def kill(self, key: str) -> None:
        """Cancels the stream, as if the member's process died mid-record."""
        self.killed.add(key)
        self.kills += 1
        self.checker.ended(key)
        self.wires[key].kill()

    def leave(self, key: str) -> None:
        """Half-closes the stream: the member leaves, the stream ends with OK."""
        self.leaving.add(key)
        self.leaves += 1
        self.checker.ended(key)
        self._spawn(self._send(self.wires[key].leave()))

    async def membership(self) -> None:
        """Members join, die and leave at random, 1 to ``plan.members`` at once."""
        for _ in range(self.rng.randint(2, self.plan.members)):
            self.add_member()
        while not self.done.is_set():
            await asyncio.sleep(self.rng.uniform(0.03, 0.25))
            await self.up.wait()
            live = self.live_members()
            x = self.rng.random()
            if len(live) < self.plan.members and (x < 0.45 or len(live) < 2):
                # Never down to no member: the group's dispatcher would stop
                # and start again, its attempts from 1 (finding 2).
                self.add_member()
            elif x < 0.85:
                holding = [k for k in live if self.checker.members[k].held]
                self.kill(self.rng.choice(holding or live))
            else:
                self.leave(self.rng.choice(live))

    # -- watching --------------------------------------------------------------

    async def monitor(self) -> None:
        while not self.done.is_set():
            await self.up.wait()
            assert self.stub is not None
            life = self.life
            try:
                response = await self.stub.GetGroup(
                    pb.GetGroupRequest(space=self.space, group=self.group), timeout=CALL_TIMEOUT
                )
            except asyncio.CancelledError:
                if not self._cut_by_crash(life):
                    raise
                continue
            except grpc.aio.AioRpcError as err:
                if life != self.life or (self.plan.crashes and err.code() in CRASH_CODES):
                    await asyncio.sleep(0.05)
                    continue
                raise
            if life != self.life:
                continue
            self.info = response.info
            self.checker.observed(response.info)
            async with self.progress:
                self.progress.notify_all()
            if (
                not self.producing
                and response.info.acked_through == self.last_position
                and response.info.last_position == self.last_position
            ):
                self.settled = True
                self.done.set()
                return
            await asyncio.sleep(0.03)

    # -- crashes ---------------------------------------------------------------

    def _cut_by_crash(self, life: int) -> bool:
        """Whether a call that raised CancelledError was cut by a crash closing
        its channel (grpc.aio ends a call its channel's close cuts with
        CancelledError, not an RpcError), not by this task being cancelled."""
        task = asyncio.current_task()
        return life != self.life and task is not None and not task.cancelling()

    async def crasher(self) -> None:
        for i in range(1, self.plan.crashes + 1):
            threshold = self.plan.records * i // (self.plan.crashes + 1)
            while self.produced < threshold:
                async with self.progress:
                    await self.progress.wait()
            await asyncio.sleep(self.rng.uniform(0, 0.3))
            await self.crash()

    async def crash(self) -> None:
        """kill -9, then a start on the same data; members join again."""
        self.up.clear()
        self.life += 1
        self.checker.new_life()
        self.crashes += 1
        await asyncio.to_thread(self.server.kill)
        if self.channel is not None:
            await self.channel.close()
        await asyncio.to_thread(self.server.start)
        self._connect()
        for _ in range(self.rng.randint(2, self.plan.members)):
            self.add_member()

    # -- the whole run ---------------------------------------------------------

    async def run(self) -> None:
        """Runs until everything is settled; then every member leaves."""
        self._connect()
        assert self.stub is not None
        await self.stub.CreateGroup(
            pb.CreateGroupRequest(group=self.group_config()), timeout=CALL_TIMEOUT
        )
        producers = [asyncio.ensure_future(self.producer(i)) for i in range(2)]
        workers = [asyncio.ensure_future(c()) for c in (self.membership, self.monitor)]
        if self.plan.crashes:
            workers.append(asyncio.ensure_future(self.crasher()))
        try:
            # A worker that fails while production goes on fails the run (the
            # producers wait on the monitor's progress: they would wait forever).
            running: set[asyncio.Future[None]] = {*producers, *workers}
            while not all(producer.done() for producer in producers):
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()
            self.producing = False
            settle_started = time.monotonic()
            done = asyncio.ensure_future(self.done.wait())
            waiting = {done, *workers}
            deadline = time.monotonic() + self.plan.settle_seconds
            while not self.done.is_set() and time.monotonic() < deadline:
                finished, waiting = await asyncio.wait(
                    waiting,
                    timeout=deadline - time.monotonic(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in finished:
                    task.result()  # a worker failed: raise its error
            done.cancel()
            if not self.done.is_set():
                self.checker.violation(
                    f"not everything settled {time.monotonic() - settle_started:.0f} s after the "
                    f"last Produce: last position {self.last_position}, GetGroup {self.info}"
                )
        finally:
            self.done.set()
            for task in producers + workers:
                task.cancel()
            await asyncio.gather(*producers, *workers, return_exceptions=True)
        await self._everyone_leaves()

    async def _everyone_leaves(self) -> None:
        self.closing = True  # a member still joining leaves once it has joined
        for key in self.live_members():
            self.leave(key)
        tasks = [t for t in self.member_tasks.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CALL_TIMEOUT)
            for task in pending:
                self.checker.violation("a member's stream did not end after it half-closed")
                task.cancel()

    async def final_info(self) -> pb.GroupInfo:
        """GetGroup once no member is left (leaving is asynchronous on the server)."""
        assert self.stub is not None
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            response = await self.stub.GetGroup(
                pb.GetGroupRequest(space=self.space, group=self.group), timeout=CALL_TIMEOUT
            )
            if not response.info.members or time.monotonic() > deadline:
                return response.info
            await asyncio.sleep(0.02)

    async def read(self, space: str, segment: str = "") -> list[pb.Record]:
        assert self.stub is not None
        records: list[pb.Record] = []
        try:
            async for response in self.stub.Consume(
                pb.ConsumeRequest(space=space, segment=segment, from_offset=1),
                timeout=CALL_TIMEOUT * 3,
            ):
                records.extend(response.records)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        return records

    async def finish(self) -> list[str]:
        info = await self.final_info()
        self.checker.observed(info)
        space = await self.read(self.space)
        parked = await self.read("$parked", f"{self.space}/{self.group}")
        violations = self.checker.finish(space, parked, info)
        stored = {r.payload for r in space}
        lost = self.acked_payloads - stored
        if lost:
            violations.append(f"{len(lost)} acked records are not in the space: {sorted(lost)[:5]}")
        if len(stored) != len(space):
            violations.append("a payload is stored twice (a retried Produce written twice)")
        self.parked = parked
        return violations

    def summary(self) -> str:
        s = self.checker.stats
        return (
            f"seed {self.plan.seed}: {self.last_position} records over {self.plan.segments} "
            f"segments, {s['deliveries']} deliveries ({s['redeliveries']} again, "
            f"{s['crossed']} crossing an answer), {s['acks']} acks, {s['nacks retry']} retry "
            f"nacks, {s['nacks park']} park nacks, {s['stray answers']} stray answers, "
            f"{len(self.parked)} parked, {s['members joined']} joins, "
            f"{self.kills} kills, {self.leaves} leaves, {self.crashes} server kill -9, "
            f"{s['moves']} segment moves, {s['obligations']} order checks, "
            f"{s['observations']} GetGroup checks"
        )


def run_plan(server: ServerProcess, plan: Plan, space: str, group: str) -> GroupRun:
    """Runs ``plan`` to its end and the final checks; the run's ``violations``."""
    run = GroupRun(server, plan, space, group)

    async def main() -> None:
        try:
            await run.run()
            run.violations = run.checker.violations
            if run.done.is_set() and run.settled:
                run.violations = await run.finish()
        finally:
            if run.channel is not None:
                await run.channel.close()

    asyncio.run(main())
    return run


__all__ = ["NONE", "PER_SEGMENT", "GroupRun", "Plan", "env_seed", "run_plan"]
