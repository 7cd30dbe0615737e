"""Power loss: every acknowledged write survives a simulated power cut.

``kill -9`` keeps the operating system's page cache, so it cannot show a
missing fsync. Here the server's data lives on :mod:`lazyfs`, a FUSE
filesystem that keeps every unfsynced write and directory change in the
memory of its own process; a power cut is ``kill -9`` of the server and then
of that process, so everything not fsynced is gone, directory entries included.

- The first start: a cut right after the very first acknowledged write on a
  fresh data directory keeps it (the server fsyncs the parents of the data
  directory it creates; RocksDB does not).
- Cycles under load: producers (single- and multi-segment transactions with
  transaction ids), a committer and a follower run; the power is cut at a
  random moment; after the restart every acknowledged transaction is there
  with its acknowledged sequences and positions, no transaction is partly
  there, sequences and positions are dense, retried unacknowledged
  transactions are written exactly once, committed offsets are intact, and
  the follower never saw a record that is now missing.
- Controls, proving the harness can see a missing fsync: acks given under
  ``--no-sync`` are lost by a power cut (and not by ``kill -9`` alone), and a
  RocksDB that creates its own directory loses everything.

Needs root and ``/dev/fuse`` (skipped otherwise, failed when ``CI`` is set).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import queue
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc

from .lazyfs import LazyFS

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
RPC_TIMEOUT = 15.0
CYCLES = 5
PRODUCERS = 3
SEGMENTS = ("s0", "s1", "s2", "s3")
SPACE = "power"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def _fuse_missing() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to mount FUSE"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian package fuse3; scripts/test installs it as root)"
    if ctypes.util.find_library("fuse3") is None:
        return "no libfuse3 (Debian package fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the FUSE binding mfusepy is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def lazyfs(tmp_path: Path) -> Iterator[LazyFS]:
    reason = _fuse_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the power-loss tests must run in CI: {reason}")
        pytest.skip(reason)
    fs = LazyFS(tmp_path / "mnt", tmp_path / "backing", tmp_path / "lazyfs.log")
    with fs:
        yield fs


# -- the server --------------------------------------------------------------


def _drain(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class Server:
    """``python server.py --listen 127.0.0.1:0 --data DIR [extra]``; killed with SIGKILL."""

    def __init__(self, data: Path, log_path: Path) -> None:
        self.data = data
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.StreamsServiceStub

    def start(self, *extra: str) -> None:
        assert self.proc is None
        self.close_channel()  # the last life's clients are done with it
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
        args = ["server.py", "--listen", "127.0.0.1:0", "--data", str(self.data), *extra]
        with open(self.log_path, "a") as log:
            log.write(f"--- start {' '.join(extra)} {time.strftime('%H:%M:%S')}\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        assert self.proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_drain, args=(self.proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                pytest.fail(f"the server did not start; log:\n{self.log_path.read_text()[-4000:]}")
            match = _LISTENING.search(line)
            if match:
                break
        self.channel = grpc.insecure_channel(f"{match.group(1)}:{match.group(2)}")
        grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT)
        self.stub = pb_grpc.StreamsServiceStub(self.channel)

    def kill(self) -> None:
        """``kill -9``: the process dies at once; the filesystem keeps what it was given."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=START_TIMEOUT)

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


@pytest.fixture
def servers(lazyfs: LazyFS) -> Iterator[list[Server]]:
    """Every server a test starts; all killed before the filesystem goes away."""
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()
        server.close_channel()


def power_cut(server: Server, fs: LazyFS) -> None:
    """The machine loses power: the server and every unfsynced change die together."""
    server.kill()
    fs.crash()
    fs.mount()


# -- the workload and what was acknowledged -----------------------------------


@dataclass(frozen=True)
class Txn:
    txid: str
    writes: tuple[tuple[str, tuple[bytes, ...]], ...]  # (segment, payloads)

    def request(self) -> pb.ProduceRequest:
        return pb.ProduceRequest(
            space=SPACE,
            transaction_id=self.txid,
            writes=[
                pb.SegmentWrite(
                    segment=segment, records=[pb.RecordInput(payload=p) for p in payloads]
                )
                for segment, payloads in self.writes
            ],
        )

    def records(self) -> list[tuple[str, bytes]]:
        return sorted((segment, p) for segment, payloads in self.writes for p in payloads)

    @property
    def size(self) -> int:
        return sum(len(payloads) for _, payloads in self.writes)


def make_txn(rng: random.Random, txid: str) -> Txn:
    count = 1 if rng.random() < 0.5 else rng.randint(2, 3)
    segments = rng.sample(SEGMENTS, count)
    writes = []
    for segment in segments:
        payloads = tuple(
            f"{txid}|{segment}|{i}|".encode() + rng.randbytes(rng.randint(0, 200))
            for i in range(rng.randint(1, 4))
        )
        writes.append((segment, payloads))
    return Txn(txid, tuple(writes))


def txid_of(payload: bytes) -> str:
    return payload.split(b"|", 1)[0].decode()


@dataclass
class Ledger:
    """What the clients were told, across every cycle."""

    txns: dict[str, Txn] = field(default_factory=dict)  # every attempted transaction
    acked: dict[str, pb.ProduceResponse] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)  # the call failed: outcome unknown
    # consumer -> (segment, acknowledged offset or None, offsets maybe stored)
    offsets: dict[str, tuple[str, int | None, set[int]]] = field(default_factory=dict)
    seen: dict[int, str] = field(default_factory=dict)  # position -> txid seen by a follower
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    checked: int = 0  # acknowledged transactions verified, summed over checks

    def last_position(self) -> int:
        with self.lock:
            return max((a.last_position for a in self.acked.values()), default=0)

    def last_sequence(self, segment: str) -> int:
        with self.lock:
            ends = [
                k.last_sequence for a in self.acked.values() for k in a.acks if k.segment == segment
            ]
            return max(ends, default=0)


_CUT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


def produce_loop(
    stub: pb_grpc.StreamsServiceStub, ledger: Ledger, prefix: str, seed: int, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        txn = make_txn(rng, f"{prefix}-{n}")
        n += 1
        with ledger.lock:
            ledger.txns[txn.txid] = txn
        try:
            ack = stub.Produce(txn.request(), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            with ledger.lock:
                ledger.unknown.add(txn.txid)
                if exc.code() not in _CUT_CODES:
                    ledger.errors.append(f"Produce {txn.txid}: {exc.code()} {exc.details()}")
            return
        with ledger.lock:
            ledger.acked[txn.txid] = ack


def commit_loop(stub: pb_grpc.StreamsServiceStub, ledger: Ledger, stop: threading.Event) -> None:
    """Commits a space offset and a segment offset, forward, to acknowledged ends."""
    while not stop.wait(0.02):
        for consumer, (segment, stored, maybe) in list(ledger.offsets.items()):
            target = ledger.last_sequence(segment) if segment else ledger.last_position()
            if target == 0 or target == stored:
                continue
            with ledger.lock:
                ledger.offsets[consumer] = (segment, stored, {*maybe, target})
            try:
                request = pb.CommitRequest(
                    consumer=consumer, space=SPACE, segment=segment, offset=target
                )
                reply = stub.Commit(request, timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() not in _CUT_CODES:
                    ledger.errors.append(f"Commit {consumer}: {exc.code()} {exc.details()}")
                return
            with ledger.lock:
                ledger.offsets[consumer] = (segment, reply.offset, {reply.offset})


def follow_loop(stub: pb_grpc.StreamsServiceStub, ledger: Ledger) -> None:
    try:
        for response in stub.Consume(
            pb.ConsumeRequest(space=SPACE, from_offset=1, follow=True), timeout=120
        ):
            with ledger.lock:
                for record in response.records:
                    ledger.seen[record.position] = txid_of(record.payload)
    except grpc.RpcError as exc:
        if exc.code() not in (*_CUT_CODES, grpc.StatusCode.DEADLINE_EXCEEDED):
            ledger.errors.append(f"follow: {exc.code()} {exc.details()}")


# -- checks --------------------------------------------------------------------


def read_space(stub: pb_grpc.StreamsServiceStub, space: str) -> list[pb.Record]:
    records: list[pb.Record] = []
    while True:
        request = pb.ConsumeRequest(space=space, from_offset=len(records) + 1)
        batch = [r for resp in stub.Consume(request, timeout=RPC_TIMEOUT) for r in resp.records]
        if not batch:
            return records
        records.extend(batch)


def check_store(stub: pb_grpc.StreamsServiceStub, ledger: Ledger) -> dict[str, list[pb.Record]]:
    """Checks the store against everything acknowledged; returns the records by txid."""
    records = read_space(stub, SPACE)
    assert [r.position for r in records] == list(range(1, len(records) + 1)), "positions dense"
    by_segment: dict[str, list[int]] = defaultdict(list)
    by_txid: dict[str, list[pb.Record]] = defaultdict(list)
    for record in records:
        by_segment[record.segment].append(record.sequence)
        by_txid[txid_of(record.payload)].append(record)
    for segment, sequences in by_segment.items():
        assert sequences == list(range(1, len(sequences) + 1)), f"sequences of {segment} dense"
    for txid, found in by_txid.items():
        # All of a transaction or nothing, exactly once, at consecutive positions.
        assert txid in ledger.txns, f"a record of a transaction never sent: {txid}"
        assert sorted((r.segment, r.payload) for r in found) == ledger.txns[txid].records(), (
            f"transaction {txid} is partly present or duplicated"
        )
        first, last = found[0].position, found[-1].position
        assert last - first + 1 == len(found), f"transaction {txid} is not contiguous"
    for txid, ack in ledger.acked.items():
        kept = by_txid.get(txid)
        assert kept, f"acknowledged transaction {txid} lost (ack {ack})"
        assert (kept[0].position, kept[-1].position) == (ack.first_position, ack.last_position)
        for segment_ack in ack.acks:
            sequences = [r.sequence for r in kept if r.segment == segment_ack.segment]
            assert (sequences[0], sequences[-1]) == (
                segment_ack.first_sequence,
                segment_ack.last_sequence,
            ), f"{txid} in {segment_ack.segment}"
        ledger.checked += 1
    for position, txid in ledger.seen.items():
        assert position <= len(records), f"a follower saw position {position}, now missing"
        assert txid_of(records[position - 1].payload) == txid, f"position {position} changed"
    for consumer, (segment, stored, maybe) in ledger.offsets.items():
        try:
            offset: int | None = stub.GetOffset(
                pb.GetOffsetRequest(consumer=consumer, space=SPACE, segment=segment),
                timeout=RPC_TIMEOUT,
            ).offset
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            offset = None
        allowed: set[int | None] = {*maybe, stored}  # stored None: never acknowledged
        assert offset in allowed, (
            f"offset of {consumer}: {offset}, acknowledged {stored}, maybe {sorted(maybe)}"
        )
        with ledger.lock:
            ledger.offsets[consumer] = (segment, offset, set())
    return by_txid


def retry_unknown(
    stub: pb_grpc.StreamsServiceStub, ledger: Ledger, by_txid: dict[str, list[pb.Record]]
) -> tuple[int, int]:
    """Retries each transaction whose call failed; returns (were there, newly written)."""
    there = written = 0
    for txid in sorted(ledger.unknown):
        ack = stub.Produce(ledger.txns[txid].request(), timeout=RPC_TIMEOUT)
        if txid in by_txid:
            assert ack.duplicate, f"{txid} was stored, its retry wrote it again"
            assert ack.first_position == by_txid[txid][0].position
            there += 1
        else:
            assert not ack.duplicate, f"{txid} was not stored, its retry says duplicate"
            written += 1
        ledger.acked[txid] = ack
    ledger.unknown.clear()
    return there, written


# -- the tests -----------------------------------------------------------------


def test_lazyfs_drops_what_was_not_fsynced(lazyfs: LazyFS) -> None:
    """The filesystem's own semantics, as RocksDB relies on them."""
    root = lazyfs.mount_point

    def fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(path: Path, data: bytes, *, sync: bool, mode: str = "wb") -> None:
        with open(path, mode) as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())

    write(root / "kept", b"durable", sync=True)
    (root / "dir").mkdir()
    fsync_dir(root)
    write(root / "dir" / "old", b"x" * 10_000, sync=True)
    fsync_dir(root / "dir")
    write(root / "kept", b" + appended", sync=False, mode="ab")  # data not fsynced
    write(root / "synced-unlinked", b"data", sync=True)  # entry never fsynced
    write(root / "dir" / "unsynced", b"gone", sync=False)
    os.rename(root / "dir" / "old", root / "dir" / "new")  # rename not fsynced
    with open(root / "dir" / "new", "r+b") as f:
        f.truncate(10)
    # While powered, reads see everything.
    assert (root / "kept").read_bytes() == b"durable + appended"
    assert sorted(os.listdir(root / "dir")) == ["new", "unsynced"]
    assert (root / "dir" / "new").stat().st_size == 10

    lazyfs.crash()
    lazyfs.mount()
    assert sorted(os.listdir(root)) == ["dir", "kept"]
    assert (root / "kept").read_bytes() == b"durable"
    assert os.listdir(root / "dir") == ["old"]
    assert (root / "dir" / "old").read_bytes() == b"x" * 10_000

    # A durable entry whose data never was fsynced comes back empty; a durable
    # rename stays; fsync of the data makes it durable.
    write(root / "empty", b"never synced", sync=False)
    os.rename(root / "dir" / "old", root / "dir" / "renamed")
    fsync_dir(root / "dir")
    fsync_dir(root)
    write(root / "kept", b"!", sync=True, mode="ab")
    lazyfs.crash()
    lazyfs.mount()
    assert (root / "empty").read_bytes() == b""
    assert os.listdir(root / "dir") == ["renamed"]
    assert (root / "kept").read_bytes() == b"durable!"


def test_first_acknowledged_write_survives_a_power_cut(
    lazyfs: LazyFS, servers: list[Server], tmp_path: Path
) -> None:
    """A fresh data directory (two levels to create): cut right after the first ack."""
    server = Server(lazyfs.mount_point / "fresh" / "streams", tmp_path / "server.log")
    servers.append(server)
    server.start()
    ledger = Ledger()
    txn = Txn("first", (("s0", (b"first|s0|0|",)), ("s1", (b"first|s1|0|", b"first|s1|1|"))))
    ledger.txns[txn.txid] = txn
    ledger.acked[txn.txid] = server.stub.Produce(txn.request(), timeout=RPC_TIMEOUT)
    power_cut(server, lazyfs)

    server.start()
    check_store(server.stub, ledger)
    assert ledger.checked == 1
    # And the first commit on a store that has just come back.
    reply = server.stub.Commit(
        pb.CommitRequest(consumer="c", space=SPACE, offset=3), timeout=RPC_TIMEOUT
    )
    ledger.offsets["c"] = ("", reply.offset, set())
    power_cut(server, lazyfs)
    server.start()
    check_store(server.stub, ledger)
    print(f"first start: 1 transaction (3 records) and 1 offset kept over {lazyfs.crashes} cuts")


@dataclass
class Figures:
    power_cuts: int = 0
    process_kills: int = 0
    retried_there: int = 0
    retried_written: int = 0


def restart_and_check(server: Server, ledger: Ledger, figures: Figures) -> None:
    """Starts the server, checks the store, retries every unacknowledged transaction."""
    server.start()
    by_txid = check_store(server.stub, ledger)
    there, written = retry_unknown(server.stub, ledger, by_txid)
    figures.retried_there += there
    figures.retried_written += written


def run_until_cut(
    server: Server,
    ledger: Ledger,
    rng: random.Random,
    name: str,
    cut: LazyFS | None,
) -> None:
    """Producers, a committer and a follower run; then ``kill -9`` of the server
    while calls are in flight, and with ``cut`` the power cut of its filesystem."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=produce_loop, args=(server.stub, ledger, f"{name}p{p}", rng.random(), stop)
        )
        for p in range(PRODUCERS)
    ]
    threads.append(threading.Thread(target=commit_loop, args=(server.stub, ledger, stop)))
    threads.append(threading.Thread(target=follow_loop, args=(server.stub, ledger)))
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(0.5, 1.5))
    server.kill()
    if cut is not None:
        cut.crash()
    stop.set()
    for thread in threads:
        thread.join(timeout=RPC_TIMEOUT + 5)
        assert not thread.is_alive(), "a client thread hung"
    assert not ledger.errors, ledger.errors
    if cut is not None:
        cut.mount()


def test_acknowledged_writes_survive_power_cuts_under_load(
    lazyfs: LazyFS, servers: list[Server], tmp_path: Path
) -> None:
    rng = random.Random(os.environ.get("POWER_LOSS_SEED", "6"))
    server = Server(lazyfs.mount_point / "data", tmp_path / "server.log")
    servers.append(server)
    ledger = Ledger()
    ledger.offsets = {"space-reader": ("", None, set()), "s0-reader": ("s0", None, set())}
    figures = Figures()
    started = time.monotonic()
    server.start()  # a fresh data directory: the first cycle covers a first start
    for cycle in range(CYCLES):
        if cycle % 2:
            # A process crash first: what it leaves unfsynced in the page cache
            # is read back at restart, and must be durable before anyone sees it.
            run_until_cut(server, ledger, rng, f"k{cycle}", None)
            figures.process_kills += 1
            restart_and_check(server, ledger, figures)
        run_until_cut(server, ledger, rng, f"c{cycle}", lazyfs)
        figures.power_cuts += 1
        restart_and_check(server, ledger, figures)
    by_txid = check_store(server.stub, ledger)  # the retries, exactly once
    records = sum(len(r) for r in by_txid.values())
    assert len(ledger.acked) >= CYCLES * 10, "too few transactions to mean anything"
    assert ledger.seen, "the follower saw nothing"
    print(
        f"power cuts: {figures.power_cuts} under load (and {figures.process_kills} kill -9 "
        f"alone) in {time.monotonic() - started:.1f}s; {len(ledger.acked)} transactions "
        f"acknowledged ({records} records), {ledger.checked} acknowledged-transaction checks; "
        f"unacknowledged retried: {figures.retried_there} had been stored (duplicate), "
        f"{figures.retried_written} written once; follower saw {len(ledger.seen)} positions"
    )


def test_harness_sees_a_missing_fsync(
    lazyfs: LazyFS, servers: list[Server], tmp_path: Path
) -> None:
    """Negative control: acks under --no-sync survive kill -9 but not a power cut."""
    server = Server(lazyfs.mount_point / "nosync", tmp_path / "server.log")
    servers.append(server)
    rng = random.Random(7)
    first = [make_txn(rng, f"a-{n}") for n in range(30)]
    second = [make_txn(rng, f"b-{n}") for n in range(30)]
    ledger = Ledger(txns={t.txid: t for t in first + second})

    server.start("--no-sync")
    for txn in first:
        ledger.acked[txn.txid] = server.stub.Produce(txn.request(), timeout=RPC_TIMEOUT)
    server.kill()  # kill -9 alone: the page cache keeps them
    server.start("--no-sync")  # (opening the store fsyncs the recovered WAL)
    check_store(server.stub, ledger)

    for txn in second:
        ledger.acked[txn.txid] = server.stub.Produce(txn.request(), timeout=RPC_TIMEOUT)
    power_cut(server, lazyfs)
    server.start()
    by_txid = read_by_txid(server.stub)
    kept_first = sum(t.txid in by_txid for t in first)
    kept_second = sum(t.txid in by_txid for t in second)
    print(
        f"--no-sync control: {len(second)} acknowledged after the last fsync, "
        f"{len(second) - kept_second} lost by the power cut; "
        f"{kept_first}/{len(first)} fsynced ones kept"
    )
    assert kept_first == len(first), "the cut lost data that had been fsynced"
    assert kept_second < len(second), "the harness lost nothing: it cannot see a missing fsync"
    # What is left is still whole transactions, a prefix of the acknowledged ones.
    ledger.acked = {t.txid: ledger.acked[t.txid] for t in first + second if t.txid in by_txid}
    check_store(server.stub, ledger)


def read_by_txid(stub: pb_grpc.StreamsServiceStub) -> dict[str, list[pb.Record]]:
    by_txid: dict[str, list[pb.Record]] = defaultdict(list)
    for record in read_space(stub, SPACE):
        by_txid[txid_of(record.payload)].append(record)
    return by_txid


_RAW_ROCKSDB = textwrap.dedent(
    """
    import sys, time, rocksdict
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    db = rocksdict.Rdict(sys.argv[1], options)
    write = rocksdict.WriteOptions()
    write.sync = True
    db.put(b"k", b"v", write)
    print("acked", flush=True)
    time.sleep(60)
    """
)


def test_harness_sees_a_missing_directory_fsync(lazyfs: LazyFS) -> None:
    """Negative control: RocksDB creating its own directory (no fsync of the parent)
    loses a synced write to a power cut; the server's own creation does not."""
    path = lazyfs.mount_point / "raw"
    proc = subprocess.Popen(
        [sys.executable, "-c", _RAW_ROCKSDB, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        assert ready, "rocksdict did not answer"
        assert proc.stdout.readline().strip() == "acked", "rocksdict did not write"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=START_TIMEOUT)
    lazyfs.crash()
    lazyfs.mount()
    assert not path.exists(), "the database survived without an fsync of its parent"
    print("directory control: a synced RocksDB write in a directory RocksDB created was lost")
