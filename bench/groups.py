"""Consumer groups: records/s through a group beside a plain Consume of the
same space, and redelivery latency after a member's stream ends.

One durable RocksDB server holds a space of ``records`` records (100 B each)
over ``segments`` segments, written ``PER_WRITE`` records to each segment per
Produce so that positions interleave the segments. In the same run:

- **plain Consume**: one client reads the space to its end (the same client
  code as the consume section, ``workers.StreamJob``), before and after the
  group runs (the mean of both is the reference);
- **a group**: ``members`` member processes (raw gRPC stubs, one Subscribe
  each, the server's default ``max_in_flight`` unless told) join a new group
  at once and ack every delivery message as soon as it arrives. Records/s:
  the space's records over the time from the joins to the last first
  delivery; each member also notes redeliveries and duplicates. Once
  ``GetGroup.acked_through`` reaches the end, the run ends. Run for
  ``ORDERING_PER_SEGMENT`` and ``ORDERING_NONE``;
- **redelivery**: in another group of the same space (starting at its end),
  ``members - 1`` members ack at once; each round a victim joins, one Produce
  adds ``PER_WRITE`` records to every segment, the victim holds (never acks)
  up to ``victim_in_flight`` of them while the others work through the rest,
  and its stream ends: ``kill -9`` of its process, or the victim cancelling
  its call. Latency: from the end (the
  coordinator's clock just before the kill; the victim's just before the
  cancel) to the first, and to the last, redelivery of the records it held at
  another member (CLOCK_MONOTONIC is one clock for every process).

    python bench/groups.py                 # CI-sized: 100k records, 1,000 segments
    python bench/groups.py --full          # the issue's figure: 1M records
    scripts/bench --only groups [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import queue
import signal
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from typing import Any

import grpc
from common import fmt, load_note, markdown_table, run_server, sample_process
from workers import CONSUME, PRODUCE, ClientPool, StreamJob, UnaryJob

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc

SPACE = "groups"
PAYLOAD = bytes(range(100))
PER_WRITE = 10  # records per segment per Produce (1,000 segments: 10,000 per call)
SETUP_TIMEOUT_S = 120.0
REDELIVERY_TIMEOUT_S = 10.0
ORDERINGS = {"per-segment": pb.ORDERING_PER_SEGMENT, "none": pb.ORDERING_NONE}
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # a TCP connection per member
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


@dataclass(frozen=True)
class Sizes:
    records: int
    segments: int
    members: int
    max_in_flight: int  # 0: the server's default (100)
    victim_in_flight: int  # records the victim holds before its stream ends
    rounds: int  # redelivery rounds of each kind (kill -9, cancel)
    orderings: tuple[str, ...] = ("per-segment", "none")


QUICK = Sizes(
    records=100_000, segments=1000, members=8, max_in_flight=0, victim_in_flight=20, rounds=1
)
FULL = Sizes(
    records=1_000_000, segments=1000, members=8, max_in_flight=0, victim_in_flight=20, rounds=3
)


# -- Members ---------------------------------------------------------------


@dataclass(frozen=True)
class MemberSpec:
    index: int
    address: str
    group: str
    max_in_flight: int
    acks: bool  # False: the victim, which holds what it gets
    max_seconds: float


@dataclass
class MemberReport:
    index: int
    member_id: str = ""
    joined_ns: int = 0
    first_ns: int = 0  # arrival of its first delivery
    last_new_ns: int = 0  # arrival of its last first-time delivery
    records: int = 0  # deliveries, redeliveries included
    messages: int = 0
    redelivered: int = 0  # deliveries with attempt > 1
    positions: list[int] = field(default_factory=list)  # first-time deliveries
    errors: list[str] = field(default_factory=list)


async def _member(
    spec: MemberSpec,
    events: mp.Queue,  # type: ignore[type-arg]
    go: EventType,
    stop: EventType,
    end_now: EventType | None,
    delivered: Any,  # mp.Value('q'): first-time deliveries of the members that ack, or None
) -> MemberReport:
    report = MemberReport(spec.index)
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(spec.address, options=_CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), SETUP_TIMEOUT_S)
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        events.put(("ready", spec.index, None))
        await loop.run_in_executor(None, go.wait, SETUP_TIMEOUT_S)
        call = stub.Subscribe()
        work = asyncio.ensure_future(_converse(spec, call, report, events, delivered))
        stopper = loop.run_in_executor(None, stop.wait, spec.max_seconds)
        waits = {work, stopper}
        if end_now is not None:
            waits.add(loop.run_in_executor(None, end_now.wait))
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if work not in done and stopper not in done:  # end_now: the victim cancels
            events.put(("ended", spec.index, time.monotonic_ns()))
        call.cancel()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
    return report


async def _converse(
    spec: MemberSpec,
    call: Any,  # grpc.aio.StreamStreamCall
    report: MemberReport,
    events: mp.Queue,  # type: ignore[type-arg]
    delivered: Any,
) -> None:
    """Joins, then reads deliveries (acking each message at once, or holding it)."""
    join = pb.SubscribeJoin(
        space=SPACE,
        group=spec.group,
        member_name=f"bench-{spec.index}",
        max_in_flight=spec.max_in_flight,
    )
    try:
        await call.write(pb.SubscribeRequest(join=join))
        while (response := await call.read()) is not grpc.aio.EOF:
            now = time.monotonic_ns()
            if response.HasField("joined"):
                report.member_id, report.joined_ns = response.joined.member_id, now
                events.put(("joined", spec.index, now))
                continue
            deliveries = response.deliveries.deliveries
            positions = [d.record.position for d in deliveries]
            report.messages += 1
            report.records += len(positions)
            report.first_ns = report.first_ns or now
            again = [(d.record.position, now) for d in deliveries if d.attempt > 1]
            report.redelivered += len(again)
            new = len(positions) - len(again)
            if new:
                report.last_new_ns = now
                report.positions += [d.record.position for d in deliveries if d.attempt == 1]
                if delivered is not None:
                    with delivered.get_lock():
                        delivered.value += new
            if spec.acks:
                await call.write(pb.SubscribeRequest(ack=pb.SubscribeAck(positions=positions)))
                if again:
                    events.put(("redelivered", spec.index, again))
            else:
                events.put(("held", spec.index, positions))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            report.errors.append(f"{exc.code().name}: {exc.details()}")
    except asyncio.InvalidStateError:
        pass  # the call was cancelled (stop) during an ack's write


def member_process(
    spec: MemberSpec,
    events: mp.Queue,  # type: ignore[type-arg]
    go: EventType,
    stop: EventType,
    end_now: EventType | None,
    delivered: Any,
) -> None:
    try:
        report = asyncio.run(_member(spec, events, go, stop, end_now, delivered))
    except Exception as exc:  # reported to the coordinator, which prints it
        report = MemberReport(spec.index, errors=[f"{type(exc).__name__}: {exc}"])
    events.put(("report", spec.index, report))


class Members:
    """Member processes of one group. Those that ack share one event queue and
    start together on ``go``; a victim (which holds what it gets and may be
    killed) has a queue and events of its own, so that its death leaves no
    lock or condition of the others held (multiprocessing's would hang)."""

    def __init__(self, address: str, group: str, max_seconds: float) -> None:
        self._ctx = mp.get_context("spawn")
        self.events: mp.Queue = self._ctx.Queue()  # type: ignore[type-arg]
        self.go = self._ctx.Event()
        self.delivered = self._ctx.Value("q", 0)
        self.address, self.group, self.max_seconds = address, group, max_seconds
        self.processes: dict[int, mp.process.BaseProcess] = {}
        self.stops: dict[int, EventType] = {}
        self.private: dict[int, mp.Queue] = {}  # type: ignore[type-arg]
        self.reports: dict[int, MemberReport] = {}
        self.killed: set[int] = set()

    def start(self, indexes: Sequence[int], max_in_flight: int) -> None:
        """Starts members that ack, each once its channel is ready, all on ``go``."""
        for i in indexes:
            self._spawn(i, max_in_flight, True, self.events, self.go, None, self.delivered)
        ready = 0
        while ready < len(indexes):
            kind, index, value = self.next(SETUP_TIMEOUT_S)
            if kind == "ready":
                ready += 1
            elif kind == "report":
                raise RuntimeError(f"member {index} failed before joining: {value.errors}")

    def start_victim(self, index: int, max_in_flight: int, end_now: EventType | None) -> None:
        """Starts a member that never acks; returns once it has joined."""
        go = self._ctx.Event()
        go.set()
        self.private[index] = self._ctx.Queue()
        self._spawn(index, max_in_flight, False, self.private[index], go, end_now, None)
        while (event := self.next_of(index, SETUP_TIMEOUT_S))[0] != "joined":
            if event[0] == "report":
                raise RuntimeError(f"the victim failed before joining: {event[2].errors}")

    def _spawn(self, index: int, max_in_flight: int, acks: bool, *args: Any) -> None:
        spec = MemberSpec(index, self.address, self.group, max_in_flight, acks, self.max_seconds)
        self.stops[index] = self._ctx.Event()
        events, go, end_now, delivered = args
        process = self._ctx.Process(
            target=member_process,
            args=(spec, events, go, self.stops[index], end_now, delivered),
            daemon=True,
        )
        process.start()
        self.processes[index] = process

    def next(self, timeout: float) -> tuple[str, int, Any]:
        """The next event of the members that ack."""
        return self._got(self.events.get(timeout=max(timeout, 0.001)))

    def next_of(self, index: int, timeout: float) -> tuple[str, int, Any]:
        """The next event of victim ``index``."""
        return self._got(self.private[index].get(timeout=max(timeout, 0.001)))

    def _got(self, event: tuple[str, int, Any]) -> tuple[str, int, Any]:
        if event[0] == "report":
            self.reports[event[1]] = event[2]
        return event

    def event(self) -> EventType:
        return self._ctx.Event()

    def kill(self, index: int) -> int:
        """kill -9 of a member's process; returns the time just before it (ns)."""
        self.killed.add(index)
        before = time.monotonic_ns()
        os.kill(self.processes[index].pid, signal.SIGKILL)
        return before

    def finish(self) -> dict[int, MemberReport]:
        """Stops the members still running and collects every report."""
        for index, stop in self.stops.items():
            if index not in self.killed:
                stop.set()
        deadline = time.monotonic() + 60
        for index in set(self.processes) - self.killed:
            while index not in self.reports and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    if index in self.private:
                        self.next_of(index, 0.1)
                    else:
                        self.next(0.1)
        for process in self.processes.values():
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        return self.reports


# -- The server side: populate, groups, plain Consume --------------------------


def writes(segments: int) -> list[pb.SegmentWrite]:
    """``PER_WRITE`` records to each segment."""
    record = pb.RecordInput(payload=PAYLOAD)
    return [
        pb.SegmentWrite(segment=f"s{k:05d}", records=[record] * PER_WRITE) for k in range(segments)
    ]


def populate(pool: ClientPool, address: str, sizes: Sizes) -> float:
    per_call = PER_WRITE * sizes.segments
    request = pb.ProduceRequest(space=SPACE, writes=writes(sizes.segments)).SerializeToString()
    calls = sizes.records // per_call
    workers = min(2, pool.size)
    began = time.monotonic()
    jobs = [
        UnaryJob(address, PRODUCE, (request,), calls // workers + (i < calls % workers), 3600, 0)
        for i in range(workers)
    ]
    results = pool.run(jobs)
    if sum(len(r.errors) for r in results):
        raise RuntimeError(
            "populating failed: " + "; ".join(e for r in results for e in r.errors[:3])
        )
    return time.monotonic() - began


def create_group(stub: streams_pb2_grpc.StreamsServiceStub, name: str, ordering: int) -> None:
    stub.CreateGroup(
        pb.CreateGroupRequest(group=pb.Group(name=name, space=SPACE, ordering=ordering)),
        timeout=30,
    )


def wait_settled(
    stub: streams_pb2_grpc.StreamsServiceStub, group: str, last: int, timeout: float
) -> float:
    """Seconds until GetGroup says every position up to ``last`` is settled (NaN: never)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        info = stub.GetGroup(pb.GetGroupRequest(space=SPACE, group=group), timeout=30).info
        if info.acked_through >= last:
            return time.monotonic() - began
        time.sleep(0.02)
    return math.nan


@dataclass
class Consumed:
    records: int
    seconds: float
    cpu_us_per_record: float  # of the server
    messages: int
    errors: list[str]

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 and not self.errors else math.nan


def plain_consume(pool: ClientPool, address: str, pid: int) -> Consumed:
    before = sample_process(pid).cpu_s
    result = pool.run(
        [StreamJob(address, CONSUME, pb.ConsumeRequest(space=SPACE).SerializeToString())]
    )[0]
    cpu = sample_process(pid).cpu_s - before
    seconds = result.end - result.start
    per_record = cpu / max(result.records, 1) * 1e6
    return Consumed(result.records, seconds, per_record, result.messages, result.errors)


# -- Throughput through a group ---------------------------------------------------


@dataclass
class Through:
    ordering: str
    records: int  # distinct positions delivered
    seconds: float  # joins to the last first-time delivery
    settled_s: float  # from then to GetGroup's acked_through at the end
    cpu_us_per_record: float  # of the server
    per_member: list[int]  # first-time deliveries per member
    redelivered: int
    duplicates: int  # first-time deliveries of a position already delivered
    messages: int
    errors: list[str]

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else math.nan


def through_group(
    address: str,
    pid: int,
    stub: streams_pb2_grpc.StreamsServiceStub,
    sizes: Sizes,
    name: str,
    ordering: int,
) -> Through:
    create_group(stub, name, ordering)
    limit = max(120.0, sizes.records / 2000)
    members = Members(address, name, limit + 60)
    errors: list[str] = []
    settled = math.nan
    try:
        members.start(range(sizes.members), sizes.max_in_flight)
        cpu_before = sample_process(pid).cpu_s
        go_ns = time.monotonic_ns()
        members.go.set()
        deadline = time.monotonic() + limit
        while members.delivered.value < sizes.records and time.monotonic() < deadline:
            if len(members.reports) == sizes.members:  # every member ended early
                break
            with contextlib.suppress(queue.Empty):
                members.next(0.01)
        if members.delivered.value < sizes.records:
            errors.append(
                f"{members.delivered.value:,} of {sizes.records:,} delivered in {limit:.0f} s"
            )
        else:
            settled = wait_settled(stub, name, sizes.records, 60)
        cpu = sample_process(pid).cpu_s - cpu_before
    finally:
        reports = members.finish()
    last_ns = max((r.last_new_ns for r in reports.values()), default=go_ns)
    seen: set[int] = set()
    total = 0
    for r in reports.values():
        seen.update(r.positions)
        total += len(r.positions)
        errors += [f"member {r.index}: {e}" for e in r.errors]
    label = pb.Ordering.Name(ordering).removeprefix("ORDERING_")
    return Through(
        label,
        len(seen),
        (last_ns - go_ns) / 1e9,
        settled,
        cpu / max(len(seen), 1) * 1e6,
        sorted(len(r.positions) for r in reports.values()),
        sum(r.redelivered for r in reports.values()),
        total - len(seen),
        sum(r.messages for r in reports.values()),
        errors,
    )


# -- Redelivery after a member's stream ends ---------------------------------------


@dataclass
class Redelivery:
    how: str  # "kill -9" or "cancel"
    held: int
    first_ms: float
    all_ms: float
    missing: int  # held records not redelivered within REDELIVERY_TIMEOUT_S


def redelivery(
    address: str, stub: streams_pb2_grpc.StreamsServiceStub, sizes: Sizes
) -> tuple[list[Redelivery], list[str]]:
    """Rounds of a victim ending, alternately by kill -9 and by cancel. The
    group starts at the end of the space; each round the victim joins, then
    one Produce adds ``PER_WRITE`` records to every segment, which the members
    (the victim too: it owns nothing, so it gets segments first) share."""
    name = "redelivery"
    stub.CreateGroup(
        pb.CreateGroupRequest(group=pb.Group(name=name, space=SPACE, from_end=True)), timeout=30
    )
    batch = pb.ProduceRequest(space=SPACE, writes=writes(sizes.segments))
    members = Members(address, name, 600)
    rounds: list[Redelivery] = []
    errors: list[str] = []
    ackers = sizes.members - 1
    try:
        members.start(range(ackers), sizes.max_in_flight)
        members.go.set()
        for round_ in range(2 * sizes.rounds):
            how = "kill -9" if round_ % 2 == 0 else "cancel"
            rounds.append(one_victim(members, ackers + round_, sizes, how, stub, batch))
    except (RuntimeError, queue.Empty) as exc:
        errors.append(f"redelivery: {type(exc).__name__}: {exc}")
    finally:
        reports = members.finish()
    errors += [f"member {r.index}: {e}" for r in reports.values() for e in r.errors]
    return rounds, errors


def one_victim(
    members: Members,
    index: int,
    sizes: Sizes,
    how: str,
    stub: streams_pb2_grpc.StreamsServiceStub,
    batch: pb.ProduceRequest,
) -> Redelivery:
    end_now = members.event() if how == "cancel" else None
    members.start_victim(index, sizes.victim_in_flight, end_now)
    stub.Produce(batch, timeout=60)
    held: set[int] = set()
    quiet_until = time.monotonic() + 30
    while len(held) < sizes.victim_in_flight and time.monotonic() < quiet_until:
        try:
            kind, _, value = members.next_of(index, quiet_until - time.monotonic())
        except queue.Empty:
            break
        if kind == "held":
            held.update(value)
            quiet_until = time.monotonic() + 1.0  # at most 1 s more for the rest
        elif kind == "report":
            raise RuntimeError(f"the victim ended early: {value.errors}")
    if not held:
        raise RuntimeError("the victim got no record within 30 s")
    if end_now is None:
        ended_ns = members.kill(index)
    else:
        end_now.set()
        while (event := members.next_of(index, SETUP_TIMEOUT_S))[0] != "ended":
            pass
        ended_ns = event[2]
    times: dict[int, int] = {}
    deadline = time.monotonic() + REDELIVERY_TIMEOUT_S
    while len(times) < len(held) and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            kind, _, value = members.next(min(deadline - time.monotonic(), 0.1))
            if kind == "redelivered":
                times.update((p, at) for p, at in value if p in held and p not in times)
    latencies = [(at - ended_ns) / 1e6 for at in times.values()]
    complete = len(times) == len(held)
    return Redelivery(
        how,
        len(held),
        min(latencies, default=math.nan),
        max(latencies) if complete else math.nan,
        len(held) - len(times),
    )


# -- One run -----------------------------------------------------------------------


@dataclass
class Outcome:
    sizes: Sizes
    note: str
    loaded_s: float
    consumes: list[Consumed]
    groups: list[Through]
    rounds: list[Redelivery]
    errors: list[str]
    took_s: float

    @property
    def consume_rate(self) -> float:
        rates = [c.rate for c in self.consumes if not math.isnan(c.rate)]
        return statistics.mean(rates) if rates else math.nan

    def ratio(self, ordering: str) -> float:
        for g in self.groups:
            if g.ordering == ordering and not g.errors:
                return g.rate / self.consume_rate
        return math.nan

    @property
    def worst_redelivery_ms(self) -> float:
        if not self.rounds or any(r.missing for r in self.rounds):
            return math.nan
        return max(r.all_ms for r in self.rounds)


def run(pool: ClientPool, sizes: Sizes) -> Outcome:
    note = load_note()
    began = time.monotonic()
    errors: list[str] = []
    consumes: list[Consumed] = []
    groups: list[Through] = []
    rounds: list[Redelivery] = []
    with run_server(sync=True) as server, channel_to(server.address) as stub:
        pid = server.process.pid
        loaded = populate(pool, server.address, sizes)
        consumes.append(plain_consume(pool, server.address, pid))
        for name in sizes.orderings:
            ordering = ORDERINGS[name]
            try:
                groups.append(through_group(server.address, pid, stub, sizes, name, ordering))
            except (grpc.RpcError, RuntimeError) as exc:
                errors.append(f"group {name}: {describe_error(exc)}")
        consumes.append(plain_consume(pool, server.address, pid))
        try:
            rounds, more = redelivery(server.address, stub, sizes)
            errors += more
        except grpc.RpcError as exc:
            errors.append(f"redelivery: {describe_error(exc)}")
        errors += [f"server log: {line}" for line in server.log_problems()[:10]]
    for c in consumes:
        errors += [f"plain Consume: {e}" for e in c.errors]
    for g in groups:
        errors += [f"group {g.ordering}: {e}" for e in g.errors[:5]]
    return Outcome(sizes, note, loaded, consumes, groups, rounds, errors, time.monotonic() - began)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def channel_to(address: str) -> Iterator[streams_pb2_grpc.StreamsServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield streams_pb2_grpc.StreamsServiceStub(channel)


# -- Report ------------------------------------------------------------------------


def describe(o: Outcome) -> str:
    s = o.sizes
    flight = s.max_in_flight or "the default (100)"
    return (
        f"{o.note}; took {o.took_s:.0f} s ({o.loaded_s:.0f} s loading); {fmt(s.records)} records "
        f"of {len(PAYLOAD)} B over {fmt(s.segments)} segments, durable server; {s.members} member "
        f"processes (raw gRPC stubs), max_in_flight {flight}, each delivery message acked on "
        "arrival"
    )


def throughput_table(o: Outcome) -> str:
    consume = o.consume_rate
    rows = [
        [
            f"plain Consume of the space, 1 stream (run {i + 1})",
            fmt(c.records),
            fmt(c.seconds, 2),
            fmt(c.rate),
            fmt(c.rate / consume, 2),
            fmt(c.cpu_us_per_record, 1),
            "-",
            "-",
            fmt(c.records / max(c.messages, 1), 1),
            "-",
        ]
        for i, c in enumerate(o.consumes)
    ]
    for g in o.groups:
        rows.append(
            [
                f"group, {g.ordering}, {len(g.per_member)} members",
                fmt(g.records),
                fmt(g.seconds, 2),
                fmt(g.rate),
                fmt(g.rate / consume, 2),
                fmt(g.cpu_us_per_record, 1),
                f"{fmt(min(g.per_member, default=0))}-{fmt(max(g.per_member, default=0))}",
                f"{fmt(g.redelivered)} / {fmt(g.duplicates)}",
                fmt((g.records + g.redelivered) / max(g.messages, 1), 1),
                fmt(g.settled_s * 1000, 0),
            ]
        )
    return markdown_table(
        [
            "workload",
            "records",
            "seconds",
            "records/s",
            "/ plain Consume (mean)",
            "server CPU µs/record",
            "records per member (min-max)",
            "redelivered / duplicates",
            "records per message",
            "then settled in ms",
        ],
        rows,
    )


def redelivery_table(o: Outcome) -> str:
    rows = [
        [str(i + 1), r.how, str(r.held), fmt(r.first_ms, 1), fmt(r.all_ms, 1), str(r.missing)]
        for i, r in enumerate(o.rounds)
    ]
    return markdown_table(
        [
            "round",
            "stream ended by",
            "records held",
            "first redelivery ms",
            "all redelivered ms",
            f"not redelivered in {REDELIVERY_TIMEOUT_S:g} s",
        ],
        rows,
    )


def as_json(o: Outcome) -> dict[str, Any]:
    return {
        "sizes": o.sizes.__dict__,
        "consume": [c.__dict__ for c in o.consumes],
        "groups": [g.__dict__ | {"rate": g.rate} for g in o.groups],
        "redelivery": [r.__dict__ for r in o.rounds],
        "per_segment_vs_consume": o.ratio("PER_SEGMENT"),
        "none_vs_consume": o.ratio("NONE"),
        "worst_redelivery_ms": o.worst_redelivery_ms,
        "errors": o.errors,
        "seconds": o.took_s,
    }


def after_tables(o: Outcome) -> str:
    """The redelivery table, the ratios of the run and its problems."""
    text = f"Redelivery after a member's stream ends ({o.sizes.members - 1} members acking, "
    text += f"the victim holding up to {o.sizes.victim_in_flight}):\n\n{redelivery_table(o)}\n"
    text += (
        f"\nRatios of this run: PER_SEGMENT / plain Consume {fmt(o.ratio('PER_SEGMENT'), 2)} "
        f"(target >= 0.25), NONE / plain Consume {fmt(o.ratio('NONE'), 2)}; worst time to "
        f"redeliver everything a member held {fmt(o.worst_redelivery_ms, 1)} ms (target < 1000).\n"
    )
    text += "".join(f"\nproblem: {e}" for e in o.errors[:20])
    return text


def render(o: Outcome) -> str:
    return f"_{describe(o)}_\n\n{throughput_table(o)}\n\n{after_tables(o)}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="1M records (the issue's figure)")
    parser.add_argument("--records", type=int, help="records in the space")
    parser.add_argument("--segments", type=int, help="segments of the space (1,000)")
    parser.add_argument("--members", type=int, help="member processes (8)")
    parser.add_argument("--max-in-flight", type=int, help="per member; 0: the server's default")
    parser.add_argument("--rounds", type=int, help="redelivery rounds of each kind")
    parser.add_argument(
        "--orderings",
        type=lambda text: tuple(text.split(",")),
        help=f"comma-separated, of {', '.join(ORDERINGS)} (both)",
    )
    args = parser.parse_args(argv)
    sizes = FULL if args.full else QUICK
    changes = {k: v for k, v in vars(args).items() if k != "full" and v is not None}
    sizes = Sizes(**(sizes.__dict__ | changes))
    if sizes.members < 2 or sizes.segments < 1 or sizes.records < PER_WRITE * sizes.segments:
        parser.error("need members >= 2 and records >= 10 x segments")
    if not set(sizes.orderings) <= set(ORDERINGS):
        parser.error(f"orderings: {', '.join(ORDERINGS)}")
    with ClientPool(2) as pool:
        outcome = run(pool, sizes)
    print(f"## Consumer groups\n\n{render(outcome)}")


if __name__ == "__main__":
    main()
