"""A full disk and a failed fsync under a ``--workers 2`` server: the writer's
store meets them, and both fronts must tell their clients, each in its own way
the single process does (test_disk_full.py has the same scenarios and helpers).

- Disk full: Produce through either front is refused (RESOURCE_EXHAUSTED or
  UNAVAILABLE) and writes nothing; reads through both fronts show exactly what
  was acked; once space is back, writes through both fronts work again
  without a restart (the same writer and fronts).
- Failed fsync: from the first failed write on, every write through either
  front is UNAVAILABLE and says "fsync", a Commit too; both fronts' health for
  streams.v1.StreamsService turns NOT_SERVING while reads through both show
  exactly what was acked.

Mounting needs root: elsewhere these tests skip, but fail when CI is set.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.ops.helpers import NOT_SERVING, SERVICE, SERVING, health_status
from tests.support.fronts import SpreadServer, channels_per_front, fronts_of
from tests.support.waiting import wait_until

from .support import fill, free_bytes, tmpfs
from .test_disk_full import (
    DEADLINE,
    FAILING_FSYNC_FLAGS,
    FS_SIZE,
    FULL_CODES,
    LEAVE_FREE,
    RECORD_BYTES,
    SEGMENT,
    SPACE,
    Log,
    check_reads,
    failing_fsync_fs,  # noqa: F401 - the fixture
    payload,
    produce_once_space_is_back,
    produce_one,
    produce_until_full,
    read_segment,
)

WORKERS = 2


@pytest.fixture
def servers() -> Iterator[list[SpreadServer]]:
    """Servers the test starts; stopped, and no front left behind, at the end."""
    started: list[SpreadServer] = []
    yield started
    for server in started:
        server.close()
        for pid in fronts_of(server.data):
            os.kill(pid, signal.SIGKILL)


def start(
    servers: list[SpreadServer], data: Path, log: Path, flags: Sequence[str] = ()
) -> tuple[SpreadServer, list[grpc.Channel]]:
    """A --workers 2 server on ``data`` and a connected channel to each front."""
    server = SpreadServer(data, log, workers=WORKERS, flags=flags)
    servers.append(server)
    server.start()
    per_front = channels_per_front(server.port, server.fronts())
    return server, [chans[0] for chans in per_front.values()]


def test_disk_full_through_both_fronts(tmp_path: Path, servers: list[SpreadServer]) -> None:
    with tmpfs(tmp_path / "fs", FS_SIZE) as mount:
        server, channels = start(servers, mount / "data", tmp_path / "server.log")
        stubs = [pb_grpc.StreamsServiceStub(c) for c in channels]
        pids = [server.pid, *server.fronts()]
        before = [payload("before", n, 1000) for n in range(3)]
        for i, data in enumerate(before):
            produce_one(stubs[i % 2], "before", data)
        stubs[1].Commit(pb.CommitRequest(consumer="c", space=SPACE, offset=1), timeout=DEADLINE)
        fill(mount / "filler", LEAVE_FREE)
        log = Log()
        produce_until_full(server.stub, log)  # the calls take turns over the fronts
        assert free_bytes(mount) < RECORD_BYTES * 2, "the filesystem should be full"
        for stub in stubs:
            data = payload("refused", len(log.refused))
            with pytest.raises(grpc.RpcError) as refused:
                produce_one(stub, SEGMENT, data)
            log.refused.append((data, refused.value.code(), refused.value.details() or ""))
            assert refused.value.code() in FULL_CODES, refused.value.details()
        for _, code, details in log.refused:
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "disk" in details or "space" in details, details
        for stub in stubs:
            check_reads(stub, log, before)

        (mount / "filler").unlink()
        produce_once_space_is_back(mount, stubs[0], log)
        for stub in stubs:
            data = payload("again", len(log.acked), 1000)
            produce_one(stub, SEGMENT, data)
            log.acked.append(data)
        for stub in stubs:
            check_reads(stub, log, before)
        assert [server.pid, *server.fronts()] == pids, "a process was restarted"


def test_failed_fsync_through_both_fronts(
    failing_fsync_fs: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    servers: list[SpreadServer],
) -> None:
    server, channels = start(
        servers, failing_fsync_fs / "data", tmp_path / "server.log", FAILING_FSYNC_FLAGS
    )
    stubs = [pb_grpc.StreamsServiceStub(c) for c in channels]
    for channel in channels:
        assert health_status(channel, SERVICE) == SERVING
    log = Log()
    first: grpc.RpcError | None = None
    for n in range(400):  # 200 MiB, far more than the 24 MiB under the image
        data = payload("f", n, 512 * 1024)
        try:
            produce_one(stubs[n % 2], SEGMENT, data)
            log.acked.append(data)
        except grpc.RpcError as err:
            first = err
            break
    assert first is not None, "the fsync never failed: the test could not provoke it"
    assert log.acked, "nothing was acked before the failure: the filesystem was too small"
    assert first.code() is grpc.StatusCode.UNAVAILABLE, (first.code(), first.details())
    assert "fsync" in (first.details() or ""), f"the server must say why: {first.details()}"
    for i, (stub, channel) in enumerate(zip(stubs, channels, strict=True)):
        for n in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                produce_one(stub, SEGMENT, payload(f"after{i}", n, 100))
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
            assert "fsync" in (caught.value.details() or ""), caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Commit(pb.CommitRequest(consumer="c", space=SPACE, offset=1), timeout=DEADLINE)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
        wait_until(
            lambda channel=channel: health_status(channel, SERVICE) == NOT_SERVING,
            10.0,
            f"front {i}'s health to say NOT_SERVING",
        )
        assert health_status(channel, "") == SERVING, "reads go on: the server serves"
        # Reads show exactly what was acked: nothing of the failed write, nor after.
        assert [r.payload for r in read_segment(stub)] == log.acked
        peek = stub.Peek(pb.PeekRequest(space=SPACE, segment=SEGMENT), timeout=DEADLINE)
        assert peek.record.sequence == len(log.acked)
    assert server.alive() and len(server.fronts()) == WORKERS
