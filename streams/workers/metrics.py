"""The writer's /metrics with ``--workers N``: its own series and the fronts'.

The writer's registry has the store, fsync, retention, background and group
series, and the request series of the group RPCs (which run there). Each
call a front serves is counted in that front's own registry, which it serves
on a loopback port it tells the writer in its ready line. At each scrape the
writer reads every front's series of :data:`FRONT_SERIES` and adds them to
its families of the same name with a ``front`` label (the front's index):
``sum(rate(streams_requests_total[5m]))`` counts every process. The fronts'
other series (their remote store's view) are left out: the writer's are the
real ones. ``--front-scrape-seconds`` bounds the whole scrape: a front that has not
answered by then, or whose page does not parse, is left out of that scrape
(logged). The fronts are read over loopback, never through ``http_proxy``.

Example::

    registry = merged_registry(server.metrics.registry, lambda: [(0, 40001), (1, 40002)], 5.0)
    metrics_http.serve("127.0.0.1:9478", registry, serving)
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable, Iterator

import prometheus_client as prom
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

log = logging.getLogger("streams.workers")
# What a front's service counts: each call, its bytes and records, its memory.
FRONT_SERIES = frozenset(
    {
        "streams_requests", "streams_request_duration_seconds", "streams_errors",
        "streams_produced_records", "streams_produced_bytes", "streams_produce_latency_seconds",
        "streams_consumed_records", "streams_active_consume_streams",
        "streams_inflight_request_bytes", "streams_memory_budget_bytes",
        "streams_memory_used_bytes", "streams_memory_waiting_streams", "streams_slow_consumers",
        "streams_removed_records", "streams_removed_bytes",
    }
)  # fmt: skip
# (front index, loopback port of its metrics) for every front serving now.
FrontPorts = Callable[[], list[tuple[int, int]]]
# The fronts listen on loopback: a proxy from the environment must not see (or fail) them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _AllProcesses(Collector):
    def __init__(self, writer: prom.CollectorRegistry, fronts: FrontPorts, wait: float) -> None:
        self._writer = writer
        self._fronts = fronts
        self._wait = wait

    def collect(self) -> Iterator[Metric]:
        families = {family.name: family for family in self._writer.collect()}
        deadline = time.monotonic() + self._wait  # one budget for the whole scrape
        for index, port in self._fronts():
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("metrics: no time left for front %d; left out of this scrape", index)
                continue
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                with _OPENER.open(url, timeout=left) as response:
                    text = response.read().decode()
                read = list(text_string_to_metric_families(text))
            except (OSError, ValueError) as exc:  # ValueError: a page that does not parse
                log.warning("metrics: front %d did not answer (%s); left out of this scrape",
                            index, exc)  # fmt: skip
                continue
            for family in read:
                mine = families.get(family.name)
                if family.name not in FRONT_SERIES or mine is None:
                    continue
                mine.samples.extend(
                    Sample(s.name, {**s.labels, "front": str(index)}, s.value, s.timestamp)
                    for s in family.samples
                )
        yield from families.values()


def merged_registry(
    writer: prom.CollectorRegistry, fronts: FrontPorts, wait: float
) -> prom.CollectorRegistry:
    """A registry whose every scrape is the writer's series plus the fronts'
    (all of them waited for at most ``wait`` seconds together)."""
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(_AllProcesses(writer, fronts, wait))
    return registry
