"""A server's memory does not grow with its number of segments beyond the catalog
cache's bound (streams/storage/catalog.py, --catalog-cache-bytes).

Two servers with the same small bound get 4,000 and 24,000 segments with
255-byte names, are restarted, then write to every segment once more (each
segment's numbers go through the cache) and list them all. Their RSS must
differ by less than half what the 20,000 extra segments took when their
numbers stayed in memory (measured on ddfffac: +17 to +22 MiB). Before measuring, each server
also writes and reads 16 MB elsewhere, so that RocksDB's own bounded memory
(its 8 MiB block cache, its memtables of 1 MiB here) is full in both and
cancels out.
Settings go through STREAMS_*
variables, which a server without the option ignores, so on such a server
this test fails for memory, not for an unknown flag.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.ops.helpers import sample, scrape
from tests.support.process import ServerProcess, free_port

from .budget_server import ALLOCATOR, MIB, status_kib

BOUND = 256 * 1024
PER_PRODUCE = 1_000
# What may differ between the two servers beside the catalog: RocksDB's table
# indexes, which grow with the data (about 2 MiB more here), and allocator
# noise (3 to 6 MiB more in all seen here).
SLACK = 10 * MIB
# Written and read by both servers: more than RocksDB's block cache and memtables hold.
FILLER_MB = 16


def segment(i: int) -> str:
    return f"{i:06d}".ljust(255, "s")


def produce(stub: object, names: range, expected: int | None) -> None:
    writes = [
        pb.SegmentWrite(
            segment=segment(i), records=[pb.RecordInput(payload=b"x")], expected_sequence=expected
        )
        for i in names
    ]
    stub.Produce(pb.ProduceRequest(space="s", writes=writes), timeout=60)  # type: ignore[attr-defined]


def fill_rocksdb_caches(stub: object) -> None:
    """Writes FILLER_MB of records and reads them back (a memtable holds a few MiB;
    the rest is flushed to table files and read through the block cache)."""
    chunk = [pb.RecordInput(payload=os.urandom(1000)) for _ in range(1000)]
    for _ in range(FILLER_MB):
        stub.Produce(  # type: ignore[attr-defined]
            pb.ProduceRequest(space="filler", writes=[pb.SegmentWrite(segment="f", records=chunk)]),
            timeout=60,
        )
    request = pb.ConsumeRequest(space="filler", segment="f", max_batch=1000)
    read = sum(len(r.records) for r in stub.Consume(request, timeout=120))  # type: ignore[attr-defined]
    assert read == 1000 * FILLER_MB


def settled(pid: int) -> int:
    """The least RSS over 3 s: RocksDB's compactions, still running after the
    writes, hold a few MiB for a second or two (measured: +2 to +5 MiB)."""
    least, end = status_kib(pid, "VmRSS"), time.monotonic() + 3.0
    while time.monotonic() < end:
        time.sleep(0.1)  # a sampling interval, not a wait for an event
        least = min(least, status_kib(pid, "VmRSS"))
    return least


def settled_rss(tmp: Path, count: int) -> tuple[int, dict[str, float]]:
    """RSS of a restarted server that wrote to and listed ``count`` segments; and its
    catalog cache metrics."""
    metrics_port = free_port()
    env = {
        **ALLOCATOR,
        "STREAMS_CATALOG_CACHE_BYTES": str(BOUND),
        "STREAMS_MEMTABLE_BYTES": str(MIB),
    }
    server = ServerProcess(
        tmp / str(count) / "data",
        tmp / f"{count}.log",
        flags=["--no-sync", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        env=env,
    )
    with server:
        server.start()
        for start in range(0, count, PER_PRODUCE):
            produce(server.stub, range(start, start + PER_PRODUCE), None)
        server.restart()
        for start in range(0, count, PER_PRODUCE):
            produce(server.stub, range(start, start + PER_PRODUCE), 1)
        listed, token = 0, ""
        while True:
            page = server.stub.ListSegments(
                pb.ListSegmentsRequest(space="s", page_size=1000, page_token=token)
            )
            assert all(s.last_sequence == 2 for s in page.segments)
            listed += len(page.segments)
            token = page.next_page_token
            if not token:
                break
        assert listed == count
        last = server.stub.Peek(pb.PeekRequest(space="s", segment=segment(count - 1)))
        assert last.record.sequence == 2 and last.record.position == 2 * count
        fill_rocksdb_caches(server.stub)
        samples = scrape(metrics_port)
        names = ("bytes", "evictions_total", "loads_total")
        # A server without the cache has none of these (it fails on memory instead).
        figures = {n: samples.get((f"streams_catalog_cache_{n}", frozenset()), -1.0) for n in names}
        return settled(server.pid), figures


def test_rss_does_not_grow_with_segments_beyond_the_bound(tmp_path: Path) -> None:
    small, small_cache = settled_rss(tmp_path, 4_000)
    large, large_cache = settled_rss(tmp_path, 24_000)
    grown = large - small
    assert grown < SLACK, (
        f"24,000 segments took {grown / MIB:.1f} MiB more than 4,000 "
        f"({small / MIB:.0f} -> {large / MIB:.0f} MiB)"
    )
    for figures in (small_cache, large_cache):
        assert 0 <= figures["bytes"] <= BOUND
    # Every segment went through the cache after the restart: read from disk, evicted.
    assert large_cache["loads_total"] > 24_000
    assert large_cache["evictions_total"] > 23_000


def test_an_unknown_segment_costs_no_memory(tmp_path: Path) -> None:
    """Looking up names that do not exist caches nothing (a client cannot fill the cache)."""
    metrics_port = free_port()
    with ServerProcess(
        tmp_path / "data", flags=["--no-sync", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    ) as server:
        server.start()
        produce(server.stub, range(1), None)
        for i in range(1, 200):
            with pytest.raises(grpc.RpcError) as caught:
                server.stub.Peek(pb.PeekRequest(space="s", segment=segment(i)))
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        # The space and its one segment, nothing for the 199 names looked up.
        assert sample(scrape(metrics_port), "streams_catalog_cache_entries", state="evictable") == 2
