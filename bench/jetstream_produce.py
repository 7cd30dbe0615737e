"""Produce latency and throughput of the JetStream backend on a 3-node R3
cluster on this machine, with JetStream's fsync on every write
(``sync_interval: always``, what Streams' durable point asks for) or with
nats-server's default (an fsync every 2 minutes: an ack is in 2 of 3 nodes'
memory, not on disk). The store is driven directly (no gRPC), one gateway.

    python bench/jetstream_produce.py --sync always
    python bench/jetstream_produce.py --sync default
    python bench/jetstream_produce.py --sync always --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.model import SegmentAppend, Transaction
from streams.storage import registry
from streams.storage.backend import Setup
from tests.support.nats import NatsCluster

BODY = b"\x0a\xee\x01" + bytes(238)  # a RecordInput with a 238-byte payload: ~240 B


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def case(store: object, name: str, records: int, producers: int, seconds: float) -> str:
    """``producers`` concurrent loops, each producing ``records``-record
    transactions to its own space for ``seconds``."""
    latencies: list[float] = []
    done = 0
    stop = time.monotonic() + seconds

    async def loop(n: int) -> None:
        nonlocal done
        txn = Transaction(f"{name}-{n}", (SegmentAppend("seg", (BODY,) * records, None),), "", b"")
        while time.monotonic() < stop:
            began = time.monotonic()
            await store.produce(txn)  # type: ignore[attr-defined]
            latencies.append(time.monotonic() - began)
            done += records

    began = time.monotonic()
    await asyncio.gather(*(loop(n) for n in range(producers)))
    elapsed = time.monotonic() - began
    p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
    return f"| {records} | {producers} | {done / elapsed:,.0f} | {p50:.2f} | {p99:.2f} |"


async def main(sync: str, seconds: float) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        NatsCluster(Path(tmp), 3, sync_interval="always" if sync == "always" else None) as cluster,
    ):
        options = {"nats_url": tuple(cluster.urls), "nats_prefix": "bench", "nats_replicas": 3}
        store = await registry.get("jetstream").open(Setup(data=Path(tmp), options=options))
        try:
            print(f"R3, sync_interval {sync}, {seconds:g} s per case, records of ~240 B")
            print("| records per produce | producers (spaces) | rec/s | p50 ms | p99 ms |")
            print("| --- | --- | --- | --- | --- |")
            for records, producers in ((1, 1), (1, 8), (100, 1), (100, 4), (1000, 1)):
                print(await case(store, f"c{records}x{producers}", records, producers, seconds))
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync", choices=("always", "default"), default="always")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.sync, args.seconds))
