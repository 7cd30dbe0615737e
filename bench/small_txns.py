"""Small transactions read as fast as big ones (issue 16, item 5).

Two spaces get the same records (100-byte payloads, spread over the same
segments): one written one record per Produce, one 100 per Produce. Each is
then read to its end with Consume, the whole space and one segment, in the
same run and alternating, from one server (segments: 10 of them read one
after the other, each to its end). The RocksDB engine's merge task
(every ``merge_seconds``, 1 s by default) copies the small chunks of the first
space into runs, so this waits ``settle`` seconds after loading before it reads.

    python bench/small_txns.py                 # 20,000 records over 100 segments
    python bench/small_txns.py --records 100000 --repeats 5

``measure()`` returns the figures (records/s and the ratio small / big), for
bench/suite.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from common import run_server

from streams.v1 import streams_pb2 as pb
from streams.v1.streams_pb2_grpc import StreamsServiceStub

PAYLOAD = bytes(range(100))
SMALL, BIG = "one-per-produce", "hundred-per-produce"


def _load(stub: StreamsServiceStub, space: str, segments: int, records: int, per: int) -> None:
    """``records`` records, ``per`` per Produce, Produce ``i`` to segment ``i % segments``."""

    def produce(call: int) -> None:
        count = min(per, records - call * per)
        stub.Produce(
            pb.ProduceRequest(
                space=space,
                writes=[
                    pb.SegmentWrite(
                        segment=f"s{call % segments}",
                        records=[pb.RecordInput(payload=PAYLOAD)] * count,
                    )
                ],
            ),
            timeout=60,
        )

    calls = -(-records // per)
    with ThreadPoolExecutor(16) as pool:  # concurrent calls: the group commit batches fsyncs
        list(pool.map(produce, range(calls)))


def _consume(
    stub: StreamsServiceStub, space: str, segments: Sequence[str] = ("",)
) -> tuple[int, float]:
    """Records read to the end of each of ``segments`` ("": the space) in turn,
    and records/s."""
    began = time.perf_counter()
    count = 0
    for segment in segments:
        request = pb.ConsumeRequest(space=space, segment=segment)
        for response in stub.Consume(request, timeout=120):
            count += len(response.records)
    return count, count / (time.perf_counter() - began)


def measure(
    records: int = 20_000,
    segments: int = 100,
    repeats: int = 5,
    settle: float = 3.0,
    sync: bool = True,
) -> dict[str, Any]:
    """Loads both spaces on a fresh server, waits ``settle`` seconds (the merge
    task), then reads each ``repeats`` times, alternating (which goes first
    alternates too): the space, and its first 10 segments one after the
    other; returns medians of records/s and the ratios small / big."""
    some = [f"s{i}" for i in range(min(10, segments))]
    with (
        run_server(sync=sync, extra=("--merge-small-bytes", "8192")) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = StreamsServiceStub(channel)
        began = time.monotonic()
        _load(stub, SMALL, segments, records, 1)
        _load(stub, BIG, segments, records, 100)
        loaded = time.monotonic() - began
        time.sleep(settle)
        rates: dict[tuple[str, str], list[float]] = {}
        for repeat in range(repeats):
            for space in (SMALL, BIG) if repeat % 2 else (BIG, SMALL):
                for kind, names, expected in (
                    ("space", [""], records),
                    ("segments", some, len(some) * (records // segments)),
                ):
                    count, rate = _consume(stub, space, names)
                    if count != expected:
                        raise RuntimeError(
                            f"Consume of {space} ({kind}) read {count} records, expected {expected}"
                        )
                    rates.setdefault((space, kind), []).append(rate)
    median = {key: statistics.median(values) for key, values in rates.items()}
    return {
        "records": records,
        "segments": segments,
        "repeats": repeats,
        "sync": sync,
        "load_seconds": loaded,
        "space_small": median[(SMALL, "space")],
        "space_big": median[(BIG, "space")],
        "segment_small": median[(SMALL, "segments")],
        "segment_big": median[(BIG, "segments")],
        "space_ratio": median[(SMALL, "space")] / median[(BIG, "space")],
        "segment_ratio": median[(SMALL, "segments")] / median[(BIG, "segments")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds for the merge task")
    parser.add_argument("--no-sync", action="store_true", help="load the server with --no-sync")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = measure(args.records, args.segments, args.repeats, args.settle, not args.no_sync)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{figures['records']:,} records over {figures['segments']} segments, "
        f"median of {figures['repeats']} reads (loaded in {figures['load_seconds']:.1f} s)"
    )
    for kind, what in (("space", "the space"), ("segment", "10 segments, one after the other")):
        print(
            f"Consume of {what}: 1 per Produce {figures[f'{kind}_small']:,.0f} rec/s, "
            f"100 per Produce {figures[f'{kind}_big']:,.0f} rec/s, "
            f"ratio {figures[f'{kind}_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
