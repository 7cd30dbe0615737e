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
  the follower never saw a record that is now missing (the journal checker of
  tests/support/journal.py, shared with the kill -9 harness).
- Trims and deletes under the same cuts: a remover trims segments and the
  space (by offset and by timestamp) and deletes segments (now and then the
  space); after the cut no record below an acknowledged trim point, nor one
  acked before an acknowledged delete was sent, is readable again (reads,
  peeks, lists, GetSpace/GetSegment), segments stay dense from their first
  retained sequence, numbers are never acked twice (numbering continues after
  deletes), every acked record no removal may have taken is there, and
  unanswered removals are retried.
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
import random
import select
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.journal import (
    CheckReport,
    Follower,
    Journal,
    assert_clean,
    check_store,
    commit_key,
    read_target,
)
from tests.support.process import ServerProcess

from .harness import removal_request, retry_removals, send_removal
from .lazyfs import LazyFS

START_TIMEOUT = 30.0
RPC_TIMEOUT = 15.0
# STREAMS_POWER_CYCLES (default 5) sets the number of power cuts per run, for longer runs.
CYCLES = int(os.environ.get("STREAMS_POWER_CYCLES", "5"))
PRODUCERS = 3
SEGMENTS = ("s0", "s1", "s2", "s3")
SPACE = "power"
# Committed forward to acknowledged ends: (consumer, segment), "" for the space.
CONSUMERS = (("space-reader", ""), ("s0-reader", "s0"))


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


@pytest.fixture
def servers(lazyfs: LazyFS) -> Iterator[list[ServerProcess]]:
    """Every server a test starts; all killed before the filesystem goes away."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()
        server.close_channel()


def power_cut(server: ServerProcess, fs: LazyFS) -> None:
    """The machine loses power: the server and every unfsynced change die together."""
    server.kill()
    fs.crash()
    fs.mount()


# -- the workload and what was acknowledged -----------------------------------


def make_request(rng: random.Random, txid: str) -> pb.ProduceRequest:
    count = 1 if rng.random() < 0.5 else rng.randint(2, 3)
    writes = []
    for segment in rng.sample(SEGMENTS, count):
        payloads = [
            f"{txid}|{segment}|{i}|".encode() + rng.randbytes(rng.randint(0, 200))
            for i in range(rng.randint(1, 4))
        ]
        writes.append(
            pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=p) for p in payloads])
        )
    return pb.ProduceRequest(space=SPACE, transaction_id=txid, writes=writes)


@dataclass
class Load:
    """What the clients were told, across every cycle."""

    journal: Journal = field(default_factory=Journal)
    follower: Follower = field(default_factory=lambda: Follower(SPACE, "", gaps=True))
    errors: list[str] = field(default_factory=list)
    checked: int = 0  # acknowledged transactions verified, summed over checks
    removals_acked: int = 0
    removal_checks: int = 0  # acked records checked gone after an acked removal


_CUT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


def produce_loop(
    stub: pb_grpc.StreamsServiceStub, load: Load, prefix: str, seed: int, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        txn = load.journal.sent(make_request(rng, f"{prefix}-{n}"))
        n += 1
        try:
            ack = stub.Produce(txn.request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            load.journal.unanswered(txn)
            if exc.code() not in _CUT_CODES:
                load.errors.append(f"Produce {txn.txid}: {exc.code()} {exc.details()}")
            return
        load.journal.acked(txn, ack)


def commit_loop(stub: pb_grpc.StreamsServiceStub, load: Load, stop: threading.Event) -> None:
    """Commits a space offset and a segment offset, forward, to acknowledged ends."""
    journal = load.journal
    while not stop.wait(0.02):
        for consumer, segment in CONSUMERS:
            key = commit_key(consumer, SPACE, segment)
            with journal.lock:
                if segment:
                    target = journal.acked_sequence[(SPACE, segment)]
                else:
                    target = journal.acked_position[SPACE]
                stored = journal.commits[key].acked
            if target == 0 or target == stored:
                continue
            journal.commit_unanswered(key, target)
            sent_at = journal.tick()
            try:
                request = pb.CommitRequest(
                    consumer=consumer, space=SPACE, segment=segment, offset=target
                )
                reply = stub.Commit(request, timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:
                deleted = exc.code() == grpc.StatusCode.NOT_FOUND and "deleted" in (
                    exc.details() or ""
                )  # the remover deleted the target: nothing stored (contract)
                if exc.code() not in _CUT_CODES and not deleted:
                    load.errors.append(f"Commit {consumer}: {exc.code()} {exc.details()}")
                return
            journal.commit_acked(key, reply.offset, sent_at)


def remove_loop(
    stub: pb_grpc.StreamsServiceStub, load: Load, seed: float, stop: threading.Event
) -> None:
    """Trims and deletes, until the cut."""
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(0.01, 0.05)):
        request = removal_request(rng, load.journal, (SPACE,), SEGMENTS)
        if request is None:
            continue
        removal = load.journal.removal_sent(request)
        outcome = send_removal(stub, request, RPC_TIMEOUT)
        if isinstance(outcome, str):
            if not any(code.name in outcome for code in _CUT_CODES):
                load.errors.append(outcome)
            return
        if outcome is None:
            return
        load.journal.removal_acked(removal, *outcome)
        load.removals_acked += 1


def follow_loop(stub: pb_grpc.StreamsServiceStub, load: Load) -> None:
    follower = load.follower
    request = pb.ConsumeRequest(space=SPACE, from_offset=follower.next_offset, follow=True)
    try:
        for response in stub.Consume(request, timeout=120):
            follower.received(response.records)
    except grpc.RpcError as exc:
        if exc.code() not in (*_CUT_CODES, grpc.StatusCode.DEADLINE_EXCEEDED):
            load.errors.append(f"follow: {exc.code()} {exc.details()}")
    except AssertionError:
        pass  # a gap or a duplicate: in follower.errors, reported by the check


# -- checks --------------------------------------------------------------------


def check(stub: pb_grpc.StreamsServiceStub, load: Load) -> CheckReport:
    """Checks the store against everything acknowledged (failing on any
    problem); what was read back is the new baseline of committed offsets."""
    report, _ = check_store(stub, load.journal, [SPACE], [load.follower])
    assert_clean(report)
    load.checked += report.acked_present
    load.removal_checks += report.removal_checks
    for key, offset in report.offsets_read.items():
        if offset is not None:
            load.journal.commit_acked(key, offset, load.journal.tick())
    return report


def retry_unknown(
    stub: pb_grpc.StreamsServiceStub, load: Load, report: CheckReport
) -> tuple[int, int]:
    """Retries each transaction whose call failed; returns (were there, newly written)."""
    there = written = 0
    for txn in load.journal.pending():
        stored = report.pending_stored[(txn.space, txn.txid)]
        ack = stub.Produce(txn.request, timeout=RPC_TIMEOUT)
        if ack.duplicate:
            # Stored (what a removal took since excepted), at the numbers it names.
            problem = load.journal.duplicate_problem(txn, ack, stored)
            assert problem is None, f"{txn.txid}: retry answered duplicate, but {problem}"
            there += 1
        else:
            assert not stored, f"{txn.txid} was stored, its retry wrote it again"
            written += 1
        load.journal.acked(txn, ack)
    problems: list[str] = []
    retry_removals(stub, load.journal, problems)
    assert not problems, problems
    return there, written


def stored_txids(stub: pb_grpc.StreamsServiceStub) -> set[str]:
    return {r.transaction_id for r in read_target(stub, SPACE, timeout=RPC_TIMEOUT)}


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
    lazyfs: LazyFS, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """A fresh data directory (two levels to create): cut right after the first ack."""
    server = ServerProcess(lazyfs.mount_point / "fresh" / "streams", tmp_path / "server.log")
    servers.append(server)
    server.start()
    load = Load()
    request = pb.ProduceRequest(
        space=SPACE,
        transaction_id="first",
        writes=[
            pb.SegmentWrite(segment="s0", records=[pb.RecordInput(payload=b"first|s0|0|")]),
            pb.SegmentWrite(
                segment="s1",
                records=[
                    pb.RecordInput(payload=b"first|s1|0|"),
                    pb.RecordInput(payload=b"first|s1|1|"),
                ],
            ),
        ],
    )
    txn = load.journal.sent(request)
    load.journal.acked(txn, server.stub.Produce(request, timeout=RPC_TIMEOUT))
    power_cut(server, lazyfs)

    server.start()
    check(server.stub, load)
    assert load.checked == 1
    # And the first commit on a store that has just come back.
    reply = server.stub.Commit(
        pb.CommitRequest(consumer="c", space=SPACE, offset=3), timeout=RPC_TIMEOUT
    )
    load.journal.commit_acked(commit_key("c", SPACE, ""), reply.offset)
    power_cut(server, lazyfs)
    server.start()
    assert check(server.stub, load).offsets_checked == 1
    print(f"first start: 1 transaction (3 records) and 1 offset kept over {lazyfs.crashes} cuts")


@dataclass
class Figures:
    power_cuts: int = 0
    process_kills: int = 0
    retried_there: int = 0
    retried_written: int = 0


def restart_and_check(server: ServerProcess, load: Load, figures: Figures) -> None:
    """Starts the server, checks the store, retries every unacknowledged transaction."""
    server.start()
    report = check(server.stub, load)
    there, written = retry_unknown(server.stub, load, report)
    figures.retried_there += there
    figures.retried_written += written


def run_until_cut(
    server: ServerProcess,
    load: Load,
    rng: random.Random,
    name: str,
    cut: LazyFS | None,
    removals: bool = False,
) -> None:
    """Producers, a committer and a follower run; then ``kill -9`` of the server
    while calls are in flight, and with ``cut`` the power cut of its filesystem;
    with ``removals`` a remover trims and deletes meanwhile."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=produce_loop, args=(server.stub, load, f"{name}p{p}", rng.random(), stop)
        )
        for p in range(PRODUCERS)
    ]
    threads.append(threading.Thread(target=commit_loop, args=(server.stub, load, stop)))
    if removals:
        threads.append(
            threading.Thread(target=remove_loop, args=(server.stub, load, rng.random(), stop))
        )
    threads.append(threading.Thread(target=follow_loop, args=(server.stub, load)))
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
    assert not load.errors, load.errors
    if cut is not None:
        cut.mount()


def test_acknowledged_writes_survive_power_cuts_under_load(
    lazyfs: LazyFS, servers: list[ServerProcess], tmp_path: Path
) -> None:
    rng = random.Random(os.environ.get("POWER_LOSS_SEED", "6"))
    server = ServerProcess(lazyfs.mount_point / "data", tmp_path / "server.log")
    servers.append(server)
    load = Load()
    figures = Figures()
    started = time.monotonic()
    server.start()  # a fresh data directory: the first cycle covers a first start
    for cycle in range(CYCLES):
        if cycle % 2:
            # A process crash first: what it leaves unfsynced in the page cache
            # is read back at restart, and must be durable before anyone sees it.
            run_until_cut(server, load, rng, f"k{cycle}", None)
            figures.process_kills += 1
            restart_and_check(server, load, figures)
        run_until_cut(server, load, rng, f"c{cycle}", lazyfs)
        figures.power_cuts += 1
        restart_and_check(server, load, figures)
    report = check(server.stub, load)  # the retries, exactly once
    acked = sum(t.ack is not None for t in load.journal.txns.values())
    assert acked >= CYCLES * 10, "too few transactions to mean anything"
    assert load.follower.records, "the follower saw nothing"
    print(
        f"power cuts: {figures.power_cuts} under load (and {figures.process_kills} kill -9 "
        f"alone) in {time.monotonic() - started:.1f}s; {acked} transactions "
        f"acknowledged ({report.records} records), {load.checked} acknowledged-transaction "
        f"checks; unacknowledged retried: {figures.retried_there} had been stored "
        f"(duplicate), {figures.retried_written} written once; follower saw "
        f"{len(load.follower.records)} positions"
    )


def test_trims_and_deletes_survive_power_cuts_under_load(
    lazyfs: LazyFS, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """The same cuts with a remover trimming and deleting under the load: an
    acknowledged removal is never undone, and nothing else is lost with it."""
    rng = random.Random(os.environ.get("POWER_LOSS_SEED", "8"))
    server = ServerProcess(lazyfs.mount_point / "data", tmp_path / "server.log")
    servers.append(server)
    load = Load()
    figures = Figures()
    started = time.monotonic()
    server.start()
    for cycle in range(CYCLES):
        if cycle % 2:
            run_until_cut(server, load, rng, f"k{cycle}", None, removals=True)
            figures.process_kills += 1
            restart_and_check(server, load, figures)
        run_until_cut(server, load, rng, f"c{cycle}", lazyfs, removals=True)
        figures.power_cuts += 1
        restart_and_check(server, load, figures)
    report = check(server.stub, load)
    acked = sum(t.ack is not None for t in load.journal.txns.values())
    assert acked >= CYCLES * 10, "too few transactions to mean anything"
    assert load.removals_acked >= CYCLES, "too few trims and deletes to mean anything"
    assert load.removal_checks > 0, "no acknowledged removal was ever checked"
    print(
        f"power cuts with removals: {figures.power_cuts} (and {figures.process_kills} kill -9 "
        f"alone) in {time.monotonic() - started:.1f}s; {acked} transactions acknowledged "
        f"({report.records} records retained), {load.removals_acked} trims/deletes "
        f"acknowledged, {load.removal_checks} record checks of acknowledged removals, "
        f"{load.checked} acknowledged-transaction checks"
    )


def test_harness_sees_a_missing_fsync(
    lazyfs: LazyFS, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Negative control: acks under --no-sync survive kill -9 but not a power cut."""
    server = ServerProcess(lazyfs.mount_point / "nosync", tmp_path / "server.log")
    servers.append(server)
    rng = random.Random(7)
    first = [make_request(rng, f"a-{n}") for n in range(30)]
    second = [make_request(rng, f"b-{n}") for n in range(30)]
    load = Load()
    acks: dict[str, pb.ProduceResponse] = {}

    server.start("--no-sync")
    for request in first:
        acks[request.transaction_id] = server.stub.Produce(request, timeout=RPC_TIMEOUT)
        load.journal.acked(load.journal.sent(request), acks[request.transaction_id])
    server.kill()  # kill -9 alone: the page cache keeps them
    server.start("--no-sync")  # (opening the store fsyncs the recovered WAL)
    check(server.stub, load)

    for request in second:
        acks[request.transaction_id] = server.stub.Produce(request, timeout=RPC_TIMEOUT)
    power_cut(server, lazyfs)
    server.start()
    kept = stored_txids(server.stub)
    kept_first = sum(r.transaction_id in kept for r in first)
    kept_second = sum(r.transaction_id in kept for r in second)
    print(
        f"--no-sync control: {len(second)} acknowledged after the last fsync, "
        f"{len(second) - kept_second} lost by the power cut; "
        f"{kept_first}/{len(first)} fsynced ones kept"
    )
    assert kept_first == len(first), "the cut lost data that had been fsynced"
    assert kept_second < len(second), "the harness lost nothing: it cannot see a missing fsync"
    # What is left is still whole transactions, as acknowledged; the lost ones
    # count as sent but never answered.
    survivors = Load()
    for request in first + second:
        txn = survivors.journal.sent(request)
        if request.transaction_id in kept:
            survivors.journal.acked(txn, acks[request.transaction_id])
    check(server.stub, survivors)


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
