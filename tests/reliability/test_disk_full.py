"""Disk full, and a failed fsync, against a server subprocess on a small filesystem.

Disk full: the server's data directory is on a 64 MiB tmpfs that the test
mounts; a filler file leaves only a few MiB free, then records of 256 KiB are
produced until the disk is full. The contract: Produce fails with
RESOURCE_EXHAUSTED (or UNAVAILABLE) and writes nothing, nothing acked is lost
(also across a restart), reads keep working, and once the filler is deleted,
writes work again without a restart. The same holds when the store's own data
filled most of the disk (recovery needs room for about one memtable, not for
the whole log), and a server started on a full disk serves reads, refuses
writes with RESOURCE_EXHAUSTED, and takes writes once space is back; RocksDB's
info logs (one per open) stay bounded however often it is restarted.

Failed fsync: tmpfs never fails an fsync, so the data directory goes on an
ext4 filesystem on a loop device whose 256 MiB image file is sparse, on a
24 MiB tmpfs. ext4 accepts writes into the page cache; the fsync's writeback
then finds no room under the image and fails with EIO, a real failed fsync.
The server must stop accepting writes, say why, never ack anything afterwards,
and keep serving reads of what it had acked.

Mounting needs root: elsewhere these tests skip, but fail when CI is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from streams.storage.rocksdb.recovery import INFO_LOG_FILES
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import ServerProcess

from .support import fill, free_bytes, need_root_feature, tmpfs

SPACE = "df"
SEGMENT = "big"
RECORD_BYTES = 256 * 1024
FS_SIZE = "64m"
# Room left by the filler: a few records fit, then the disk is full.
LEAVE_FREE = 4 * 1024 * 1024
FULL_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
RECOVERY_SECONDS = 15.0
DEADLINE = 30.0


@dataclass
class Log:
    """What one segment was acked, and what was refused (must never appear)."""

    acked: list[bytes] = field(default_factory=list)
    refused: list[tuple[bytes, grpc.StatusCode, str]] = field(default_factory=list)


def payload(tag: str, n: int, size: int = RECORD_BYTES) -> bytes:
    head = f"{tag}:{n}:".encode()
    return head + os.urandom(size - len(head))


def produce_one(stub: pb_grpc.StreamsServiceStub, segment: str, data: bytes) -> pb.ProduceResponse:
    return stub.Produce(
        pb.ProduceRequest(
            space=SPACE,
            writes=[pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=data)])],
        ),
        timeout=DEADLINE,
    )


def produce_until_full(stub: pb_grpc.StreamsServiceStub, log: Log, refusals: int = 3) -> None:
    """Produces big records until ``refusals`` in a row are refused."""
    in_a_row = 0
    for n in range(1000):
        data = payload("fill", n)
        try:
            ack = produce_one(stub, SEGMENT, data)
        except grpc.RpcError as err:
            log.refused.append((data, err.code(), err.details() or ""))
            assert err.code() in FULL_CODES, (
                f"a full disk must be RESOURCE_EXHAUSTED or UNAVAILABLE, got "
                f"{err.code().name}: {err.details()}"
            )
            in_a_row += 1
            if in_a_row == refusals:
                return
            continue
        in_a_row = 0  # an ack after a refusal is fine: a smaller record found room
        log.acked.append(data)
        assert ack.acks[0].last_sequence == len(log.acked), "sequences must stay dense"
    pytest.fail("the disk never filled up: 1000 records of 256 KiB were all acked")


def read_segment(stub: pb_grpc.StreamsServiceStub, segment: str = SEGMENT) -> list[pb.Record]:
    return [
        r
        for response in stub.Consume(
            pb.ConsumeRequest(space=SPACE, segment=segment), timeout=DEADLINE
        )
        for r in response.records
    ]


def check_reads(stub: pb_grpc.StreamsServiceStub, log: Log, before: list[bytes]) -> None:
    """Every acked record is there, in order, dense; no refused record is."""
    records = read_segment(stub)
    assert [r.sequence for r in records] == list(range(1, len(log.acked) + 1))
    assert [r.payload for r in records] == log.acked, "acked records differ from what is read"
    refused = {data for data, _, _ in log.refused}
    assert not refused & {r.payload for r in records}, "a refused record became visible"
    assert [r.payload for r in read_segment(stub, "before")] == before
    space = [
        r
        for response in stub.Consume(pb.ConsumeRequest(space=SPACE), timeout=DEADLINE)
        for r in response.records
    ]
    assert [r.position for r in space] == list(range(1, len(before) + len(log.acked) + 1))
    peek = stub.Peek(pb.PeekRequest(space=SPACE, segment=SEGMENT), timeout=DEADLINE)
    assert peek.record.payload == log.acked[-1]
    segments = stub.ListSegments(pb.ListSegmentsRequest(space=SPACE), timeout=DEADLINE)
    assert {s.name: s.last_sequence for s in segments.segments} == {
        "before": len(before),
        SEGMENT: len(log.acked),
    }
    got = stub.GetOffset(pb.GetOffsetRequest(consumer="c", space=SPACE), timeout=DEADLINE)
    assert got.offset == 1


@dataclass
class FullDisk:
    mount: Path
    server: ServerProcess
    before: list[bytes]
    log: Log

    @property
    def stub(self) -> pb_grpc.StreamsServiceStub:
        return self.server.stub

    @property
    def filler(self) -> Path:
        return self.mount / "filler"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[FullDisk]:
    """A server on a 64 MiB tmpfs, filled up: a few records in segment "before",
    a committed offset, then records of 256 KiB until the disk refused three."""
    with tmpfs(tmp_path / "fs", FS_SIZE) as mount:
        server = ServerProcess(mount / "data", tmp_path / "server.log")
        server.start()
        try:
            before = [payload("before", n, 1000) for n in range(3)]
            for data in before:
                produce_one(server.stub, "before", data)
            server.stub.Commit(pb.CommitRequest(consumer="c", space=SPACE, offset=1))
            fill(mount / "filler", LEAVE_FREE)
            log = Log()
            produce_until_full(server.stub, log)
            assert free_bytes(mount) < RECORD_BYTES * 2, "the filesystem should be full"
            yield FullDisk(mount, server, before, log)
        finally:
            server.close()


def test_disk_full_refuses_writes_and_keeps_reads(full_disk: FullDisk) -> None:
    fd = full_disk
    assert fd.log.refused, "nothing was refused"
    codes = {code.name for _, code, _ in fd.log.refused}
    for _, code, details in fd.log.refused:
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert "disk" in details or "space" in details, details
    # Reads, peeks, lists and offsets all work on the full disk.
    check_reads(fd.stub, fd.log, fd.before)
    # A Commit may be refused too (it writes), with the same statuses; never lost if acked.
    try:
        fd.stub.Commit(pb.CommitRequest(consumer="c2", space=SPACE, offset=2), timeout=DEADLINE)
        assert fd.stub.GetOffset(pb.GetOffsetRequest(consumer="c2", space=SPACE)).offset == 2
    except grpc.RpcError as err:
        assert err.code() in FULL_CODES, (err.code(), err.details())
    assert fd.server.alive(), f"refused with {codes}, then died"


def produce_once_space_is_back(mount: Path, stub: pb_grpc.StreamsServiceStub, log: Log) -> None:
    """Produces one small record, retrying refusals for up to RECOVERY_SECONDS."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    errors: list[str] = []
    ack = None
    n = 0
    while ack is None and time.monotonic() < deadline:
        data = payload("after", n, 1000)
        n += 1
        try:
            ack = produce_one(stub, SEGMENT, data)
        except grpc.RpcError as err:
            assert err.code() in FULL_CODES, (err.code(), err.details())
            log.refused.append((data, err.code(), err.details() or ""))
            errors.append(f"{err.code().name}: {err.details()}")
            time.sleep(0.5)
    assert ack is not None, (
        f"{free_bytes(mount) >> 20} MiB free again, but Produce still fails "
        f"{RECOVERY_SECONDS:.0f}s later ({len(errors)} tries) without a restart; last: "
        f"{errors[-1] if errors else None}"
    )
    log.acked.append(data)
    assert ack.acks[0].last_sequence == len(log.acked), "refused writes took a sequence"


def test_writes_resume_once_space_is_freed_without_restart(full_disk: FullDisk) -> None:
    fd = full_disk
    pid = fd.server.proc.pid if fd.server.proc else None
    fd.filler.unlink()
    produce_once_space_is_back(fd.mount, fd.stub, fd.log)
    assert fd.server.proc is not None and fd.server.proc.pid == pid, "the server restarted"
    check_reads(fd.stub, fd.log, fd.before)
    # And keeps working: a few more, and a commit.
    for i in range(5):
        data = payload("more", i, 1000)
        produce_one(fd.stub, SEGMENT, data)
        fd.log.acked.append(data)
    fd.stub.Commit(pb.CommitRequest(consumer="c", space=SPACE, offset=1), timeout=DEADLINE)
    check_reads(fd.stub, fd.log, fd.before)


def test_nothing_acked_is_lost_across_a_restart_after_disk_full(full_disk: FullDisk) -> None:
    fd = full_disk
    fd.filler.unlink()
    fd.server.stop()
    fd.server.start()
    check_reads(fd.stub, fd.log, fd.before)
    data = payload("restarted", 0, 1000)
    ack = produce_one(fd.stub, SEGMENT, data)
    fd.log.acked.append(data)
    assert ack.acks[0].last_sequence == len(fd.log.acked), "refused writes took a sequence"
    check_reads(fd.stub, fd.log, fd.before)


def test_writes_resume_after_the_store_itself_filled_the_disk(tmp_path: Path) -> None:
    """The store's own data fills most of the disk (a small filler leaves it 40
    MiB): once the filler goes, writes resume without a restart, though far
    less is free than the store holds."""
    with tmpfs(tmp_path / "fs", FS_SIZE) as mount:
        server = ServerProcess(mount / "data", tmp_path / "server.log")
        server.start()
        try:
            before = [payload("before", 0, 1000)]
            produce_one(server.stub, "before", before[0])
            server.stub.Commit(pb.CommitRequest(consumer="c", space=SPACE, offset=1))
            fill(mount / "filler", 40 * 1024 * 1024)
            log = Log()
            produce_until_full(server.stub, log)
            filler = (mount / "filler").stat().st_size
            stored = sum(p.stat().st_blocks * 512 for p in (mount / "data").iterdir())
            assert stored > filler, f"the store holds {stored} bytes, the filler {filler}"
            (mount / "filler").unlink()
            produce_once_space_is_back(mount, server.stub, log)
            check_reads(server.stub, log, before)
        finally:
            server.close()


def info_logs(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name.startswith("LOG"))


def test_a_start_on_a_full_disk_serves_reads_and_takes_writes_once_space_is_back(
    full_disk: FullDisk,
) -> None:
    fd = full_disk
    data = fd.server.data
    for _ in range(6):  # each start opens RocksDB (and its info log) at least once
        fd.server.stop()
        fd.server.start()
        check_reads(fd.stub, fd.log, fd.before)
        with pytest.raises(grpc.RpcError) as caught:
            produce_one(fd.stub, SEGMENT, payload("refused", 0, 1000))
        err = caught.value
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        assert "full" in (err.details() or ""), err.details()
    logs = info_logs(data)
    assert len(logs) <= 1 + INFO_LOG_FILES, f"RocksDB's info logs keep growing: {logs}"
    fd.filler.unlink()
    produce_once_space_is_back(fd.mount, fd.stub, fd.log)
    check_reads(fd.stub, fd.log, fd.before)


def test_sigterm_after_disk_full_exits_0(full_disk: FullDisk) -> None:
    """README, Operations: on SIGTERM RocksDB is closed cleanly and the process exits 0.
    A disk that was full (and has room again) must not change that."""
    fd = full_disk
    fd.filler.unlink()
    code = fd.server.stop()
    log = fd.server.log_path.read_text(errors="replace")
    assert code == 0, f"exit code {code} after SIGTERM; log tail:\n{log[-2000:]}"


def test_concurrent_producers_fill_the_disk(tmp_path: Path) -> None:
    """Four producers race into a full disk. A refusal that says RESOURCE_EXHAUSTED
    wrote nothing; an UNAVAILABLE one has an unknown outcome, so it is retried with
    its transaction_id once space is back: each transaction ends up exactly once,
    acked ones all present, sequences dense, also after a restart."""
    with tmpfs(tmp_path / "fs", FS_SIZE) as mount:
        server = ServerProcess(mount / "data", tmp_path / "server.log")
        server.start()
        try:
            fill(mount / "filler", LEAVE_FREE)
            lock = threading.Lock()
            acked: dict[str, bytes] = {}  # transaction id -> payload
            nothing_written: dict[str, bytes] = {}
            unknown: dict[str, tuple[str, bytes]] = {}  # id -> (segment, payload)
            wrong: list[str] = []

            def producer(index: int) -> None:
                channel = grpc.insecure_channel(server.target)
                stub = pb_grpc.StreamsServiceStub(channel)
                in_a_row = 0
                for n in range(300):
                    txid, data = f"p{index}-{n}", payload(f"p{index}", n, 64 * 1024)
                    request = pb.ProduceRequest(
                        space=SPACE,
                        transaction_id=txid,
                        writes=[
                            pb.SegmentWrite(
                                segment=f"p{index}", records=[pb.RecordInput(payload=data)]
                            )
                        ],
                    )
                    try:
                        stub.Produce(request, timeout=DEADLINE)
                        with lock:
                            acked[txid] = data
                        in_a_row = 0
                    except grpc.RpcError as err:
                        with lock:
                            if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                                nothing_written[txid] = data
                            elif err.code() is grpc.StatusCode.UNAVAILABLE:
                                unknown[txid] = (f"p{index}", data)
                            else:
                                wrong.append(f"{err.code().name}: {err.details()}")
                        in_a_row += 1
                        if in_a_row == 5:
                            break
                channel.close()

            threads = [threading.Thread(target=producer, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not wrong, f"a full disk gave other statuses: {wrong[:5]}"
            assert nothing_written or unknown, "the disk never filled up"
            assert acked, "nothing was acked before the disk filled up"

            (mount / "filler").unlink()
            deadline = time.monotonic() + RECOVERY_SECONDS
            for txid, (segment, data) in sorted(unknown.items()):
                request = pb.ProduceRequest(
                    space=SPACE,
                    transaction_id=txid,
                    writes=[
                        pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=data)])
                    ],
                )
                while True:
                    try:
                        server.stub.Produce(request, timeout=DEADLINE)
                        break
                    except grpc.RpcError as err:
                        assert time.monotonic() < deadline, (
                            f"retry never succeeded: {err.details()}"
                        )
                        time.sleep(0.5)
                acked[txid] = data

            for restarted in (False, True):
                if restarted:
                    server.stop()
                    server.start()
                stored: dict[str, list[pb.Record]] = {}
                for index in range(4):
                    stored[f"p{index}"] = read_segment(server.stub, f"p{index}")
                everything = [r for records in stored.values() for r in records]
                for records in stored.values():
                    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
                payloads = [r.payload for r in everything]
                assert len(payloads) == len(set(payloads)), "a transaction is stored twice"
                assert {r.transaction_id: r.payload for r in everything} == acked, (
                    f"restarted={restarted}: stored transactions differ from the acked ones; "
                    f"refused with RESOURCE_EXHAUSTED but stored: "
                    f"{sorted(set(nothing_written) & {r.transaction_id for r in everything})[:5]}"
                )
        finally:
            server.close()


# -- a failed fsync -----------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


# A memtable larger than the tmpfs under the image: the write-ahead log alone
# fills it, so the first thing that fails is the log's fsync. With the default
# (16 MiB) RocksDB's own flush of the memtable could hit the full tmpfs first,
# and writes were then refused as a full disk (seen twice under CI load).
FAILING_FSYNC_FLAGS = ["--memtable-bytes", str(64 << 20)]


@pytest.fixture
def failing_fsync_fs(tmp_path: Path) -> Iterator[Path]:
    """An ext4 filesystem (256 MiB, sparse) whose image lives on a 24 MiB tmpfs:
    once the tmpfs is full, writeback (so fsync) fails with EIO."""
    for tool in ("mkfs.ext4", "losetup"):
        if shutil.which(tool) is None:
            need_root_feature(f"{tool} is not installed (e2fsprogs, util-linux)")
    with tmpfs(tmp_path / "backing", "24m") as backing:
        image = backing / "ext4.img"
        _run("truncate", "-s", "256M", str(image))
        made = _run("mkfs.ext4", "-q", "-F", str(image))
        if made.returncode != 0:
            need_root_feature(f"mkfs.ext4 failed: {made.stderr.strip()}")
        mount = tmp_path / "ext4"
        mount.mkdir()
        mounted = _run("mount", "-o", "loop", str(image), str(mount))
        if mounted.returncode != 0:
            need_root_feature(f"mounting a loop device failed: {mounted.stderr.strip()}")
        try:
            yield mount
        finally:
            _run("umount", "-l", str(mount))


def test_failed_fsync_stops_writes_and_says_why(failing_fsync_fs: Path, tmp_path: Path) -> None:
    server = ServerProcess(
        failing_fsync_fs / "data", tmp_path / "server.log", flags=FAILING_FSYNC_FLAGS
    )
    server.start()
    try:
        stub = server.stub
        log = Log()
        first: grpc.RpcError | None = None
        for n in range(400):  # 100 MiB, far more than the 24 MiB under the image
            data = payload("f", n, 512 * 1024)
            try:
                produce_one(stub, SEGMENT, data)
                log.acked.append(data)
            except grpc.RpcError as err:
                first = err
                log.refused.append((data, err.code(), err.details() or ""))
                break
        assert first is not None, "the fsync never failed: the test could not provoke it"
        assert log.acked, "nothing was acked before the failure: the filesystem was too small"
        assert first.code() is grpc.StatusCode.UNAVAILABLE, (first.code(), first.details())
        assert "fsync" in (first.details() or ""), f"the server must say why: {first.details()}"

        # From now on writes are refused, and say why; none is acked, not even a
        # tiny one that would fit: the failed fsync is not retried as if it had worked.
        for n in range(10):
            data = payload("after", n, 100)
            with pytest.raises(grpc.RpcError) as caught:
                produce_one(stub, SEGMENT, data)
            err = caught.value
            log.refused.append((data, err.code(), err.details() or ""))
            assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            assert "fsync" in (err.details() or ""), f"must say why: {err.details()}"
        with pytest.raises(grpc.RpcError) as caught:
            stub.Commit(pb.CommitRequest(consumer="c", space=SPACE, offset=1), timeout=DEADLINE)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()

        # Reads go on, and show exactly what was acked: nothing of the write whose
        # fsync failed, nothing refused afterwards.
        records = read_segment(stub)
        assert [r.payload for r in records] == log.acked
        peek = stub.Peek(pb.PeekRequest(space=SPACE, segment=SEGMENT), timeout=DEADLINE)
        assert peek.record.sequence == len(log.acked)
        assert server.alive()
    finally:
        server.close()
