"""Prometheus metrics, on a registry of their own.

Example::

    metrics = Metrics(data_dir=Path("data"))
    metrics.produced(records=100, size=10_000)
    server, thread = metrics.serve("127.0.0.1:9464", serving=lambda: True)  # GET /metrics

Cardinality stays bounded: requests are labelled by method (the service's
RPCs) and status code (gRPC's seventeen); consumer lag has one series per
committed offset, for at most ``lag_series`` of them (``--metrics-lag-series``,
the first in consumer, space, segment order), with
``streams_consumer_lag_truncated`` saying when there are more; consumer
groups have one series per live group (members connected), for at most
``lag_series`` of them too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar
from wsgiref.simple_server import WSGIServer

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams import metrics_http
from streams.errors import StreamsError
from streams.groups import GroupStats
from streams.memory import InflightRequests, MemoryBudget
from streams.model import Removed, Target
from streams.storage.port import DiskUsage

# Latencies here run from ~0.1 ms (no-sync, memory) to seconds (a stalled disk).
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip
# A whole call: a Consume of many stored records may take a minute.
_REQUEST_BUCKETS = (*_LATENCY_BUCKETS, 10, 30, 60)
# The causes streams_removed_records and streams_removed_bytes count.
REMOVAL_CAUSES = ("trim", "delete", "retention")
# How long a scrape waits for the event loop to read the committed offsets.
_LAG_READ_SECONDS = 5.0
_T = TypeVar("_T")


def _read_on(loop: asyncio.AbstractEventLoop, read: Coroutine[object, object, _T]) -> _T | None:
    """What ``read`` returns, run on the server's ``loop`` from a scrape's
    thread; None when the loop is busy or gone, or the store closed or
    damaged: that scrape then has no such series."""
    future = asyncio.run_coroutine_threadsafe(read, loop)
    try:
        return future.result(_LAG_READ_SECONDS)
    except (concurrent.futures.TimeoutError, RuntimeError, StreamsError):
        return None
    finally:
        future.cancel()


class LagSource(Protocol):
    async def consumer_lags(self, limit: int) -> tuple[list[tuple[str, Target, int]], bool]: ...


class DiskSource(Protocol):
    def disk_usage(self) -> DiskUsage | None: ...


class GroupSource(Protocol):
    def stats(self) -> Sequence[GroupStats]: ...


class LastOffsets(Protocol):
    async def last_offset(self, target: Target) -> int: ...


class WatchedStore(LagSource, DiskSource, Protocol):
    """What the metrics read from the store at each scrape."""


class CatalogCache(Protocol):
    """What the store's cache of space and segment numbers holds (see
    streams/storage/catalog.py)."""

    capacity_bytes: int
    bytes: int
    loads: int
    evictions: int

    @property
    def evictable(self) -> int: ...

    @property
    def pending(self) -> int: ...


class Metrics:
    """The server's metrics; one instance per server."""

    def __init__(self, data_dir: Path, lag_series: int = 1000) -> None:
        # prometheus_client's switch is process-wide: no `_created` series, which
        # double every counter and histogram for a value Prometheus does not use.
        prom.disable_created_metrics()
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.lag_series = lag_series
        r = self.registry
        self.requests = prom.Counter(
            "streams_requests",
            "RPCs by method and final status code, OK included (the error ratio is the share "
            "with code != OK).",
            ["method", "code"],
            registry=r,
        )
        self.request_seconds = prom.Histogram(
            "streams_request_duration_seconds",
            "Time each RPC took in the server, from its handler's start to its status, by "
            "method (follow streams excluded: they last as long as their client stays).",
            ["method"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
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
            "or responses (Consume's and unary calls', handed to gRPC, not yet sent).",
            ["use"],
            registry=r,
        )
        self._memory_waiting = prom.Gauge(
            "streams_memory_waiting_streams",
            "Calls waiting for memory of the budget to send their next response.",
            registry=r,
        )
        self.slow_consumers = prom.Counter(
            "streams_slow_consumers",
            "Connections closed because their client did not take a response within "
            "--slow-consumer-seconds (each also logged as a warning).",
            registry=r,
        )
        self._inflight_request_bytes = prom.Gauge(
            "streams_inflight_request_bytes",
            "Raw bytes of the requests being handled now (capped by --max-inflight-request-bytes).",
            registry=r,
        )
        self._removed_records = prom.Counter(
            "streams_removed_records",
            "Records removed, by cause: trim (Trim), delete (DeleteSegment, DeleteSpace) or "
            "retention (the background pass, --retention-interval).",
            ["cause"],
            registry=r,
        )
        self._removed_bytes = prom.Counter(
            "streams_removed_bytes",
            "Bytes (payload and metadata, as SpaceInfo.bytes counts them) of the records "
            "removed, by cause (as streams_removed_records).",
            ["cause"],
            registry=r,
        )
        for cause in REMOVAL_CAUSES:
            self._removed_records.labels(cause)
            self._removed_bytes.labels(cause)
        disk = prom.Gauge(
            "streams_storage_bytes",
            "Size on disk of the --data folder (for the rocksdb storage: SST, WAL, manifest).",
            registry=r,
        )
        disk.set_function(lambda: _folder_size(data_dir))
        # finished()'s series, by (method, code) and by method: bounded as they are.
        self._outcomes: dict[tuple[str, str], tuple[prom.Counter, prom.Counter | None]] = {}
        self._durations: dict[str, prom.Histogram] = {}

    def finished(self, method: str, code: str, seconds: float | None) -> None:
        """Counts an RPC that ended with status ``code`` and, unless None, its
        duration. Runs once per call: each series is looked up once (a
        ``labels()`` call takes a lock and costs as much as the count)."""
        counters = self._outcomes.get((method, code))
        if counters is None:
            failed = self.errors.labels(method, code) if code != "OK" else None
            counters = self._outcomes[method, code] = (self.requests.labels(method, code), failed)
        done, failed = counters
        done.inc()
        if failed is not None:
            failed.inc()
        if seconds is not None:
            duration = self._durations.get(method)
            if duration is None:
                duration = self._durations[method] = self.request_seconds.labels(method)
            duration.observe(seconds)

    def produced(self, records: int, size: int) -> None:
        self.produced_records.inc(records)
        self.produced_bytes.inc(size)

    def removed(self, cause: str, removed: Removed) -> None:
        """Counts what a trim, delete or retention pass removed."""
        self._removed_records.labels(cause).inc(removed.records)
        self._removed_bytes.labels(cause).inc(removed.bytes)

    def watch_memory(self, memory: MemoryBudget, requests: InflightRequests) -> None:
        """Exports the memory budget's use and the request bytes in flight."""
        self._memory_budget.set_function(lambda: memory.capacity)
        self._memory_used.labels("windows").set_function(lambda: memory.windows)
        self._memory_used.labels("responses").set_function(lambda: memory.responses)
        self._memory_waiting.set_function(lambda: memory.waiting)
        self._inflight_request_bytes.set_function(lambda: requests.used)

    def watch_store(self, store: WatchedStore) -> None:
        """Exports each committed consumer's lag and the store's disk usage,
        read from ``store`` on the running event loop (the store's thread) at
        each scrape, and what its catalog cache holds, when it has one (the
        rocksdb engine's)."""
        loop = asyncio.get_running_loop()
        self.registry.register(_ConsumerLag(store, loop, self.lag_series))
        self.registry.register(_DiskUsage(store, loop))
        catalog: CatalogCache | None = getattr(store, "catalog", None)
        if catalog is not None:
            self.registry.register(_CatalogCacheCollector(catalog))

    def watch_groups(self, groups: GroupSource, store: LastOffsets) -> None:
        """Exports each live consumer group's lag and counters, read from
        ``groups`` (and its space's last position from ``store``) on the
        running event loop at each scrape."""
        loop = asyncio.get_running_loop()
        self.registry.register(_GroupMetrics(groups, store, loop, self.lag_series))

    def serve(
        self, listen: str, serving: Callable[[], bool]
    ) -> tuple[WSGIServer, threading.Thread]:
        """Serves ``/metrics`` and ``/healthz`` (see :mod:`streams.metrics_http`) on
        ``listen`` (HOST:PORT, port 0 picks one) in a thread."""
        return metrics_http.serve(listen, self.registry, serving)


class _ConsumerLag(Collector):
    """``streams_consumer_lag`` per committed offset, bounded (see the module)."""

    def __init__(self, store: LagSource, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._store = store
        self._loop = loop
        self._limit = limit

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag, truncated = self._families()
        read = _read_on(self._loop, self._store.consumer_lags(self._limit))
        if read is None:
            return iter(())
        found, more = read
        for consumer, target, behind in found:
            lag.add_metric([consumer, target.space, target.segment], behind)
        truncated.add_metric([], int(more))
        return iter((lag, truncated))

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "streams_consumer_lag",
            "Records a consumer has yet to process: its target's last offset minus its "
            "committed offset (segment empty: a space-level offset).",
            labels=["consumer", "space", "segment"],
        )
        truncated = GaugeMetricFamily(
            "streams_consumer_lag_truncated",
            f"1 when more consumers committed offsets than --metrics-lag-series ({self._limit}) "
            "allows series for; those past it (in consumer, space, segment order) have none.",
        )
        return lag, truncated


# streams_group_* counters: the attribute of GroupStats each one reads, and its help.
_GROUP_COUNTERS = (
    ("delivered", "Deliveries to the group's members (first and repeated)."),
    ("redelivered", "Deliveries of a record again (attempt 2 and later: nack, timeout, leave)."),
    ("acked", "Records the group's members acked (durable)."),
    ("parked", "Records the group parked to its dead-letter segment (durable)."),
)


class _GroupMetrics(Collector):
    """Per live group (one with members connected): ``streams_group_lag``
    (the space's last position minus the group's acked_through), in flight,
    members, and the counters of its dispatcher since it started (it starts
    with the first member and stops with the last: counters restart then,
    which Prometheus' ``rate`` takes as a counter reset). Bounded like
    consumer lag (--metrics-lag-series)."""

    def __init__(
        self,
        groups: GroupSource,
        store: LastOffsets,
        loop: asyncio.AbstractEventLoop,
        limit: int,
    ) -> None:
        self._groups = groups
        self._store = store
        self._loop = loop
        self._limit = limit

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        read = _read_on(self._loop, self._read())
        if read is None:
            return iter(())
        found, more = read
        families = self._families()
        lag, in_flight, members, truncated, *counters = families
        for stats, last in found:
            labels = [stats.space, stats.group]
            lag.add_metric(labels, max(0, last - stats.acked_through))
            in_flight.add_metric(labels, stats.in_flight)
            members.add_metric(labels, stats.members)
            for family, (attribute, _) in zip(counters, _GROUP_COUNTERS, strict=True):
                family.add_metric(labels, getattr(stats, attribute))
        truncated.add_metric([], int(more))
        return iter(families)

    async def _read(self) -> tuple[list[tuple[GroupStats, int]], bool]:
        every = sorted(self._groups.stats(), key=lambda stats: (stats.space, stats.group))
        kept = every[: self._limit]
        lasts: dict[str, int] = {}
        for stats in kept:
            if stats.space not in lasts:
                lasts[stats.space] = await self._store.last_offset(Target(stats.space))
        return [(stats, lasts[stats.space]) for stats in kept], len(every) > len(kept)

    def _families(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["space", "group"]
        gauges: list[GaugeMetricFamily | CounterMetricFamily] = [
            GaugeMetricFamily(
                "streams_group_lag",
                "Records of the space the group has yet to settle: the space's last position "
                "minus the group's acked_through.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "streams_group_in_flight",
                "Records delivered to the group's members and not settled yet.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "streams_group_members", "Members connected to the group.", labels=labels
            ),
            GaugeMetricFamily(
                "streams_group_metrics_truncated",
                f"1 when more groups have members than --metrics-lag-series ({self._limit}) "
                "allows series for; those past it (in space, group order) have none.",
            ),
        ]
        counters = [
            CounterMetricFamily(f"streams_group_{attribute}_records", text, labels=labels)
            for attribute, text in _GROUP_COUNTERS
        ]
        return gauges + counters


class _DiskUsage(Collector):
    """``streams_disk_bytes`` and ``streams_disk_reclaimed_bytes_total`` from the
    store's :meth:`~streams.storage.port.Store.disk_usage`, read on its loop;
    nothing for a store that keeps no files."""

    def __init__(self, store: DiskSource, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(self._families(DiskUsage(0, 0)))

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        usage = _read_on(self._loop, self._read())
        return iter(()) if usage is None else iter(self._families(usage))

    async def _read(self) -> DiskUsage | None:
        return self._store.disk_usage()

    @staticmethod
    def _families(usage: DiskUsage) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "streams_disk_bytes",
                "Bytes the storage backend's files take now (removed records count until "
                "their space is reclaimed).",
                value=usage.bytes,
            ),
            CounterMetricFamily(
                "streams_disk_reclaimed_bytes",
                "Bytes given back to the file system by reclaiming removed records, since the "
                "server started.",
                value=usage.reclaimed_bytes,
            ),
        )


class _CatalogCacheCollector(Collector):
    """The catalog cache's size, bound and traffic, read at each scrape (plain
    integers: reading them from the scrape thread needs no lock)."""

    def __init__(self, cache: CatalogCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cache = self._cache
        entries = GaugeMetricFamily(
            "streams_catalog_cache_entries",
            "Spaces and segments whose numbers are in memory: evictable, or pending (a "
            "write awaits its fsync; kept until durable, even past the bound).",
            labels=["state"],
        )
        entries.add_metric(["evictable"], cache.evictable)
        entries.add_metric(["pending"], cache.pending)
        yield entries
        yield GaugeMetricFamily(
            "streams_catalog_cache_bytes",
            "Estimated memory of the cached space and segment numbers.",
            value=cache.bytes,
        )
        yield GaugeMetricFamily(
            "streams_catalog_cache_capacity_bytes",
            "The catalog cache's bound (--catalog-cache-bytes).",
            value=cache.capacity_bytes,
        )
        yield CounterMetricFamily(
            "streams_catalog_cache_loads",
            "Space and segment numbers read from disk because they were not cached.",
            value=cache.loads,
        )
        yield CounterMetricFamily(
            "streams_catalog_cache_evictions",
            "Space and segment numbers dropped from memory to stay within the bound.",
            value=cache.evictions,
        )


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
