"""Prometheus metrics, on a registry of their own (no process-global state).

Example::

    metrics = Metrics(data_dir=Path("data"))
    metrics.produced(records=100, size=10_000)
    server, thread = metrics.serve("127.0.0.1:9100")   # GET /metrics
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import prometheus_client as prom

from streams.memory import InflightRequests, MemoryBudget

# Latencies here run from ~0.1 ms (no-sync, memory) to seconds (a stalled disk).
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip


class Metrics:
    """The server's metrics; one instance per server."""

    def __init__(self, data_dir: Path) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.produced_records = prom.Counter(
            "streams_produced_records",
            "Records written by Produce (duplicates excluded).",
            registry=r,
        )
        self.produced_bytes = prom.Counter(
            "streams_produced_bytes", "Payload and metadata bytes written by Produce.", registry=r
        )
        self.consumed_records = prom.Counter(
            "streams_consumed_records", "Records sent by Consume (follow included).", registry=r
        )
        self.active_consume_streams = prom.Gauge(
            "streams_active_consume_streams",
            "Consume streams open now (follow included).",
            registry=r,
        )
        self.produce_latency = prom.Histogram(
            "streams_produce_latency_seconds",
            "Produce ack latency, from validated request to durable (fsync included).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fsync_seconds = prom.Histogram(
            "streams_fsync_seconds",
            "Duration of each write-ahead-log fsync (group commit).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = prom.Counter(
            "streams_errors",
            "RPCs that ended with an error status, by method and code.",
            ["method", "code"],
            registry=r,
        )
        self.background_failures = prom.Counter(
            "streams_background_failures",
            "Background tasks (dedupe sweep, ...) that raised; each is logged and retried.",
            ["task"],
            registry=r,
        )
        self.store_writable = prom.Gauge(
            "streams_store_writable",
            "1 while the store accepts writes; 0 after a full disk or a failed fsync "
            "(health then says NOT_SERVING for streams.v1.StreamsService).",
            registry=r,
        )
        self.store_writable.set(1)
        self._memory_budget = prom.Gauge(
            "streams_memory_budget_bytes",
            "The memory budget for live-tail windows and buffered responses.",
            registry=r,
        )
        self._memory_used = prom.Gauge(
            "streams_memory_used_bytes",
            "Memory of the budget in use, by use: windows (live-tail cache, evicted first) "
            "or responses (handed to gRPC, not yet sent).",
            ["use"],
            registry=r,
        )
        self._memory_waiting = prom.Gauge(
            "streams_memory_waiting_streams",
            "Consume streams waiting for memory of the budget to send their next response.",
            registry=r,
        )
        self._inflight_request_bytes = prom.Gauge(
            "streams_inflight_request_bytes",
            "Raw bytes of the requests being handled now (capped by --max-inflight-request-bytes).",
            registry=r,
        )
        disk = prom.Gauge(
            "streams_storage_bytes",
            "Size on disk of the RocksDB folder (SST, WAL, manifest).",
            registry=r,
        )
        disk.set_function(lambda: _folder_size(data_dir))

    def produced(self, records: int, size: int) -> None:
        self.produced_records.inc(records)
        self.produced_bytes.inc(size)

    def watch_memory(self, memory: MemoryBudget, requests: InflightRequests) -> None:
        """Exports the memory budget's use and the request bytes in flight."""
        self._memory_budget.set_function(lambda: memory.capacity)
        self._memory_used.labels("windows").set_function(lambda: memory.windows)
        self._memory_used.labels("responses").set_function(lambda: memory.responses)
        self._memory_waiting.set_function(lambda: memory.waiting)
        self._inflight_request_bytes.set_function(lambda: requests.used)

    def serve(self, listen: str) -> tuple[WSGIServer, threading.Thread]:
        """Serves ``/metrics`` on ``listen`` (HOST:PORT, port 0 picks one) in a thread."""
        host, _, port = listen.rpartition(":")
        return prom.start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)


def _folder_size(folder: Path) -> int:
    total = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue  # a compaction removed it meanwhile
    return total
