"""Damaged data on disk, against the real server: reported, never silently truncated.

- A write-ahead log damaged before its end (a byte flipped in its middle after
  kill -9): the server refuses to start, exit code 2, with one line on stderr
  naming the log file and the data directory. (RocksDB's default recovery
  would start and silently drop every acknowledged record after the damage.)
- A damaged last write (a byte flipped inside the last acknowledged write
  after kill -9; issue 10's F4): refused, exit code 2, one line naming the log
  file, the bytes and the way out; with ``--wal-tail-damage drop`` the server
  starts without that write and logs an ERROR naming what it dropped.
- A torn tail (the log cut inside its last write, as a crash before that
  write's fsync leaves it): the server starts and serves every record
  acknowledged before it. The crash before the fsync is simulated by putting
  back the durable mark (STREAMS-DURABLE) as it was before that write: the
  server writes it after each fsync, so a cut through an acknowledged write is
  told apart (and refused, like any damage to an acknowledged write).
- A damaged table block (a byte flipped inside the data of a table file): reads
  that reach it answer DATA_LOSS naming the target and the file, the server
  logs it, and everything else keeps being served.

The table file is made deterministic by flushing the closed store with
RocksDB itself, and the flipped byte is found by searching the file for a
record's random payload, so it lands inside a data block, never in an index or
the footer.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
import rocksdict

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.damage import flip_byte, the_wal
from tests.support.process import REPO_ROOT, ServerProcess

SPACE = "c"
DEADLINE = 30.0
START_TIMEOUT = 60.0


def produce(stub: pb_grpc.StreamsServiceStub, segment: str, data: bytes) -> pb.ProduceResponse:
    request = pb.ProduceRequest(
        space=SPACE,
        writes=[pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=data)])],
    )
    return stub.Produce(request, timeout=DEADLINE)


def consume(stub: pb_grpc.StreamsServiceStub, **fields: object) -> list[pb.Record]:
    request = pb.ConsumeRequest(space=SPACE, **fields)  # type: ignore[arg-type]
    return [r for response in stub.Consume(request, timeout=DEADLINE) for r in response.records]


def start_outcome(data: Path, log_path: Path) -> tuple[int | None, str]:
    """Starts a server on ``data``: (None, "") if it came up listening (then
    stopped), else (exit code, stderr)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "server.py", "--listen", "127.0.0.1:0", "--data", str(data)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        while True:
            line = lines.get(timeout=START_TIMEOUT)
            if line is None:
                code = proc.wait(timeout=START_TIMEOUT)
                return code, log_path.read_text()
            if "listening on" in line:
                proc.terminate()
                proc.wait(timeout=START_TIMEOUT)
                return None, ""


def test_wal_damaged_in_its_middle_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log")
    server.start()
    acked = [produce(server.stub, "a", os.urandom(100)) for _ in range(2000)]
    assert acked[-1].acks[0].last_sequence == 2000
    server.kill()
    wal = the_wal(data)
    flip_byte(wal, wal.stat().st_size // 2)

    code, stderr = start_outcome(data, tmp_path / "restart.log")
    if code is None:  # it started: show what it serves
        server.start()
        served = len(consume(server.stub, segment="a"))
        server.stop()
        pytest.fail(f"started on a WAL damaged in its middle, serving {served} of 2000 acked")
    assert code == 2, f"exit code {code}; stderr:\n{stderr[-2000:]}"
    refusal = [line for line in stderr.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1, f"one line must say why; stderr:\n{stderr[-2000:]}"
    assert wal.name in refusal[0] and str(data) in refusal[0], refusal[0]
    assert "Traceback" not in stderr, stderr[-2000:]


def test_damaged_last_acked_write_is_refused_then_dropped_on_request(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log")
    server.start()
    payloads = [f"{i:04} ".encode() + os.urandom(200) for i in range(40)]
    for payload in payloads:
        produce(server.stub, "a", payload)
    server.kill()
    wal = the_wal(data)
    flip_byte(wal, wal.read_bytes().find(payloads[-1]) + 20)

    code, stderr = start_outcome(data, tmp_path / "restart.log")
    assert code == 2, f"exit code {code}; stderr:\n{stderr[-2000:]}"
    refusal = [line for line in stderr.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1, f"one line must say why; stderr:\n{stderr[-2000:]}"
    for part in (wal.name, str(data), "damaged last write", "bytes ", "--wal-tail-damage drop"):
        assert part in refusal[0], (part, refusal[0])

    server.start("--wal-tail-damage", "drop")
    try:
        assert [r.payload for r in consume(server.stub, segment="a")] == payloads[:-1]
        ack = produce(server.stub, "a", b"after")
        assert ack.acks[0].first_sequence == 40, "sequences must stay dense"
    finally:
        server.stop()
    errors = [line for line in server.log_path.read_text().splitlines() if " ERROR " in line]
    dropped = [line for line in errors if "damaged last write, dropped" in line]
    assert len(dropped) == 1 and wal.name in dropped[0] and "bytes " in dropped[0], errors


def test_torn_wal_tail_starts_with_every_acked_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log")
    server.start()
    payloads = [os.urandom(300) for _ in range(200)]
    for payload in payloads:
        produce(server.stub, "a", payload)
    size = the_wal(data).stat().st_size  # all 200 acked: fsynced up to here
    mark = (data / "STREAMS-DURABLE").read_bytes()
    produce(server.stub, "a", os.urandom(300))
    server.kill()
    # As if the server died before the last write's fsync: the mark had not moved.
    (data / "STREAMS-DURABLE").write_bytes(mark)
    wal = the_wal(data)
    # Cut the last write in the middle, as a crash before its fsync leaves it.
    os.truncate(wal, (size + wal.stat().st_size) // 2)
    server.start()
    try:
        assert [r.payload for r in consume(server.stub, segment="a")] == payloads
        ack = produce(server.stub, "a", b"after")
        assert ack.acks[0].first_sequence == 201, "sequences must stay dense"
    finally:
        server.stop()


def test_damaged_table_block_answers_data_loss(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log")
    server.start()
    # Records larger than a table block (4 KiB): each one in a block of its own.
    payloads = [f"{i}:".encode() + os.urandom(5000) for i in range(60)]
    acks = [produce(server.stub, "a", p) for p in payloads]
    other = [produce(server.stub, "b", os.urandom(100)) for _ in range(3)]
    assert server.stop() == 0
    # Every record into a table file, as RocksDB itself writes one.
    db = rocksdict.Rdict(str(data), rocksdict.Options(raw_mode=True))
    db.flush(True)
    db.close()
    ssts = list(data.glob("*.sst"))
    damaged = payloads[-1]  # the last record: Peek, the tail of a Consume and a time search
    flipped = []
    for sst in ssts:
        at = sst.read_bytes().find(damaged)
        while at != -1:
            flip_byte(sst, at + 100)
            flipped.append(sst.name)
            at = sst.read_bytes().find(damaged, at + 1)
    assert len(flipped) == 2, f"expected the segment and the space copy, found {flipped}"

    server.start()
    try:
        stub = server.stub
        last = acks[-1].acks[0].last_sequence
        calls = {
            "Consume segment": lambda: consume(stub, segment="a"),
            "Consume space": lambda: consume(stub),
            "Peek segment": lambda: stub.Peek(pb.PeekRequest(space=SPACE, segment="a")),
            "from_timestamp": lambda: consume(stub, segment="a", from_timestamp=acks[-1].timestamp),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            err = caught.value
            assert err.code() is grpc.StatusCode.DATA_LOSS, (name, err.code(), err.details())
            assert ".sst" in (err.details() or ""), (name, err.details())
        # What the damage does not touch is served, up to the record before it.
        before = consume(stub, segment="a", to_offset=last - 1)
        assert [r.payload for r in before] == payloads[:-1]
        assert len(consume(stub, segment="b")) == len(other)
        log = server.log_path.read_text()
        assert "data loss" in log and flipped[0] in log, log[-3000:]
    finally:
        server.stop()
